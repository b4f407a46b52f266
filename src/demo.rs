#[derive(clap::Args)]
pub struct DemoArgs {}
pub async fn run(_a: DemoArgs) -> i32 {
    0
}
