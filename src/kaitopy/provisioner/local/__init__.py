"""The `local` node provider: each NodeClaim becomes a real node on this machine, a kubelet with
its own containerd (runc), root directory, cgroup root and pod bridge. See docs/local-nodes.md."""
