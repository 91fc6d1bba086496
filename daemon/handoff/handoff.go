package handoff

import (
	"encoding/json"
	"errors"
)

// Version of the protocol. A predecessor refuses a successor of another
// version, which then starts without a handover.
const Version = 1

// SocketName is the handoff socket's name in the daemon's run directory.
const SocketName = "handoff.sock"

// maxFrame bounds a frame: a device with thousands of peers fits.
const maxFrame = 16 << 20

// maxFiles bounds the descriptors of one frame.
const maxFiles = 16

var (
	// ErrNoPredecessor: nothing answers on the handoff socket; start anew.
	ErrNoPredecessor = errors.New("no running daemon to take over from")
	// ErrRefused: the predecessor said no (Refusal.Reason says why).
	ErrRefused = errors.New("the running daemon refused the handover")
	// ErrPredecessorGone: the predecessor hung up before handing over.
	ErrPredecessorGone = errors.New("the running daemon went away during the handover")
)

// Frame types.
const (
	typeHello  = "hello"
	typeRefuse = "refuse"
	typeState  = "state"
	typeAck    = "ack"
)

// frame is one message of the protocol.
type frame struct {
	Type    string `json:"type"`
	Version int    `json:"version"`
	PID     int    `json:"pid,omitempty"`
	Reason  string `json:"reason,omitempty"`
	// Files names the descriptors sent with a state frame, in order.
	Files []string        `json:"files,omitempty"`
	State json.RawMessage `json:"state,omitempty"`
}
