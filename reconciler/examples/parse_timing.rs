//! Times reading a desired-state file, to find where the time goes.
fn main() {
    let path = std::env::args().nth(1).expect("a desired-state file");
    let text = std::fs::read_to_string(&path).unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let _ = xendisk::desired::from_str("x", &text, &Default::default()).unwrap();
        println!("load {:?}", t.elapsed());
    }
}
