//! Run on a host whose kernel refuses fmod_ret programs (our development and CI machines):
//! the refusal must be explained with its errno and leave nothing behind. `cargo xtask test`
//! runs this suite exactly when its probe found such a kernel.
use mptcpify_tests::*;

#[test]
fn a_kernel_that_refuses_fmod_ret_is_explained_and_nothing_changes() {
    let _g = setup();
    let cg = TestCgroup::new("mptcpify-t-refused");
    let stderr = fails(&["enable", "--cgroup", &cg.relative], "refuses fmod_ret (BPF_MODIFY_RETURN) tracing programs");
    assert!(stderr.contains("os error"), "the errno is named: {stderr}");
    assert!(mptcpify_pins().is_empty(), "{:?}", mptcpify_pins());
    assert_eq!(status_json()["loaded"], false);
    fails(&["probe"], "refuses fmod_ret");
}
