module example.com/starsink-producer

go 1.22
