package policy

import (
	"io"
	"log/slog"
)

// Config configures an Applier. The zero value is usable.
type Config struct {
	// Logger receives what the applier does; default: discard.
	Logger *slog.Logger
	// Table is the name of weft's nftables table (family inet); default
	// "weft". The applier touches only its own chains, sets, maps and
	// counters in it, all named "pol-*".
	Table string
	// LogGroup is the NFLOG group that sampled drops are sent to; default
	// DefaultLogGroup.
	LogGroup uint16
	// LogRate is how many drops per second and per pod and direction are
	// logged at most; default DefaultLogRate.
	LogRate uint32
	// NoLog turns the logging of sampled drops off (drops are still
	// counted).
	NoLog bool
	// NetNS, when not zero, is an open file descriptor of the network
	// namespace to program; default: the namespace of the calling thread.
	NetNS int
}

// Defaults of Config.
const (
	DefaultTable    = "weft"
	DefaultLogGroup = 87
	DefaultLogRate  = 5
)

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if c.LogGroup == 0 {
		c.LogGroup = DefaultLogGroup
	}
	if c.LogRate == 0 {
		c.LogRate = DefaultLogRate
	}
	return c
}

// DropCount is the drop counter of one policy-isolated local pod and
// direction.
type DropCount struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	Direction Direction `json:"direction"` // "ingress" or "egress"
	Packets   uint64    `json:"packets"`
	Bytes     uint64    `json:"bytes"`
}
