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
// The package knows nothing of tunnels: the state is opaque bytes and the
// files are named by the sender.
package handoff
