// Package handoff passes a running daemon's live data path to the daemon
// that replaces it, so that an upgrade or a restart cuts no flow.
//
// The predecessor listens on RUN_DIR/handoff.sock (mode 0600). A successor
// that starts while it runs connects there before it opens anything of its
// own, and the two speak length-prefixed JSON frames; descriptors travel as
// SCM_RIGHTS with the frame that names them:
//
//	successor                                   predecessor
//	    │ connect RUN_DIR/handoff.sock               │ checks the peer's uid
//	    │── hello {version, pid} ───────────────────▶│ (SO_PEERCRED): its own only
//	    │                                            │
//	    │◀── refuse {reason} ────────────────────────│ wrong uid or version, or
//	    │    (successor starts as after a crash)     │ another successor first
//	    │                                            │
//	    │                                            │ stops gossip, API, state;
//	    │                                            │ the data path still runs
//	    │                                            │ stops wireguard-go, keeps
//	    │                                            │ the TUN open (no loss)
//	    │◀── state {files, state} + SCM_RIGHTS ──────│
//	    │── ack ────────────────────────────────────▶│
//	    │ runs wireguard-go on the TUN at once,      │ exits
//	    │ then gossip, API, state                    │
//
// Either side may die at any point. A successor that loses the predecessor
// before the state frame starts as it would after a crash: it reattaches to
// the persistent TUN by name (retrying while the dying predecessor still
// holds it). Descriptors in flight when the predecessor dies reach the
// successor all the same: the kernel holds them with the frame.
//
// When this happens. A successor takes over whenever it starts while its
// predecessor runs: a DaemonSet rolling with maxSurge (the new pod starts
// beside the old one, which deploy/weft.yaml does), or `weft daemon`
// started by hand. A DaemonSet rolling with maxUnavailable instead deletes
// the old pod and starts the new one only once the old one is gone: no
// process ever meets its successor, and the new daemon re-attaches to the
// persistent TUN (as after kill -9), with pod traffic through the tunnel
// paused for as long as the new pod takes to start. Waiting on SIGTERM
// (--handoff-wait) helps only where the successor is started without
// waiting for the old daemon to exit (`kill -TERM; weft daemon`); the
// predecessor's data path keeps running while it waits.
//
// The package knows nothing of tunnels: the state is opaque bytes and the
// files are named by the sender.
package handoff
