//! The three announced scenarios, end to end on the embedded server (the example programs'
//! own code, included here).

#[allow(dead_code)]
#[path = "../examples/image_farm.rs"]
mod image_farm;
#[allow(dead_code)]
#[path = "../examples/legacy_command.rs"]
mod legacy_command;
#[allow(dead_code)]
#[path = "../examples/word_count.rs"]
mod word_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_farm_least_loaded_and_killed_backend_gets_nothing() {
    let r = image_farm::run(6).await.expect("scenario");
    assert!(
        r.before_kill.iter().all(|b| b == "render2"),
        "{:?}",
        r.before_kill
    );
    assert_eq!(r.after_kill.len(), 6);
    assert!(
        r.after_kill.iter().all(|b| b == "render1"),
        "{:?}",
        r.after_kill
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_map_reduce() {
    let (counts, agents) = word_count::run(4).await.expect("scenario");
    assert_eq!(agents, 4);
    let mut expect = std::collections::BTreeMap::new();
    for w in word_count::CORPUS.split_whitespace() {
        *expect.entry(w.to_string()).or_insert(0) += 1;
    }
    assert_eq!(counts, expect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_command_on_the_bus() {
    let (lines, words) = legacy_command::run("one two three\nfour five\n")
        .await
        .expect("scenario");
    assert_eq!((lines, words), (2, 5));
}
