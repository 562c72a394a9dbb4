//! Issue 17: the Secret template check of an ApiKey whose `secret.template.data` holds 70,000 ×
//! `{{.key}}` (560 KB, what a tenant can write) must not allocate what the rendered Secret would
//! hold. The check used to render every placeholder as 4 KiB before checking the size: 286 MB
//! allocated per check, 290 MiB peak RSS of the operator. A counting allocator measures the
//! peak heap the check adds.
//!
//! `cargo test --test template_memory -- --nocapture`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use keysmith::api::{ApiKey, ApiKeySpec, SecretSpec, SecretTemplate};
use keysmith::controller::check_template;

struct Peak;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        grew(n as isize - l.size() as isize);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Peak = Peak;

#[test]
fn checking_a_template_of_70000_placeholders_allocates_little() {
    let template = "{{.key}}".repeat(70_000);
    let mut ak = ApiKey::new(
        "big",
        ApiKeySpec {
            secret: Some(Box::new(SecretSpec {
                template: Some(SecretTemplate {
                    data: [("MANY".to_string(), template)].into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        },
    );
    ak.metadata.namespace = Some("team-a".into());
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let result = check_template(&ak);
    let peak = PEAK.load(Ordering::SeqCst) - base;
    println!(
        "check_template of 70,000 x {{{{.key}}}} (560 KB): {:?}; peak heap added {} KiB",
        result
            .as_ref()
            .map_err(|e| e.chars().take(80).collect::<String>()),
        peak / 1024
    );
    assert!(
        result.is_err(),
        "a Secret of 70,000 key values cannot be written"
    );
    assert!(peak < 64 * 1024, "the check allocated {peak} bytes");
}
