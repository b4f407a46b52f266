//! Labels: one per batch, fixed for the batch's whole life, so that StarRocks can refuse
//! a second commit of the same rows.

/// StarRocks accepts labels matching `^[-\w]{1,128}$`.
pub const MAX_LABEL: usize = 128;

/// Replaces every character outside `[-A-Za-z0-9_]` with `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Makes `{labelPrefix}_{sink}_{startId}_{seq}` labels for one sink of one loader start.
#[derive(Clone, Debug)]
pub struct LabelGen {
    base: String,
    next_seq: u64,
}

impl LabelGen {
    /// `start_id` must differ between starts of the same loader (see [`start_id`]).
    pub fn new(prefix: &str, sink: &str, start_id: &str) -> Self {
        let tail = format!("_{}_{}", sanitize(sink), sanitize(start_id));
        // Keep room for "_" and a 20-digit sequence number; shorten the prefix, never the
        // parts that make the label unique.
        let room = MAX_LABEL.saturating_sub(tail.len() + 21);
        let mut prefix = sanitize(prefix);
        prefix.truncate(room);
        Self {
            base: format!("{prefix}{tail}"),
            next_seq: 0,
        }
    }

    /// What every label of this start of this sink begins with: prefix, sink, start id.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn next_label(&mut self) -> String {
        let label = format!("{}_{}", self.base, self.next_seq);
        self.next_seq = self.next_seq.wrapping_add(1);
        label
    }
}

/// An id for this start of the process: milliseconds since the epoch and a random
/// suffix, in hex, so two starts in one pod never share labels. Within one process the
/// millisecond part strictly increases from call to call (a later call in the same
/// millisecond takes the next one), so two ids from one process always differ; the
/// random part covers two processes started in the same millisecond.
pub fn start_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let prev = LAST_MS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    let ms = now.max(prev + 1);
    format!("{ms:x}{:04x}", fastrand::u16(..))
}

/// Whether `s` is a label StarRocks accepts.
pub fn is_valid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_documented_shape_and_count_up() {
        let mut g = LabelGen::new("orders-7f9c", "orders", "abc");
        assert_eq!(g.next_label(), "orders-7f9c_orders_abc_0");
        assert_eq!(g.next_label(), "orders-7f9c_orders_abc_1");
    }

    #[test]
    fn unsafe_characters_become_underscores() {
        let mut g = LabelGen::new("pod.name:1", "s", "x");
        let l = g.next_label();
        assert_eq!(l, "pod_name_1_s_x_0");
        assert!(is_valid(&l));
    }

    #[test]
    fn a_long_prefix_is_shortened_and_the_label_stays_valid_at_any_sequence() {
        let mut g = LabelGen::new(&"p".repeat(300), &"s".repeat(63), &start_id());
        g.next_seq = u64::MAX;
        let l = g.next_label();
        assert!(is_valid(&l), "{} chars: {l}", l.len());
        assert!(l.contains(&"s".repeat(63)));
    }

    #[test]
    fn start_ids_from_one_process_always_differ_even_within_a_millisecond() {
        let ids: Vec<String> = (0..1000).map(|_| start_id()).collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| is_valid(id)));
    }
}
