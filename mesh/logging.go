package mesh

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// logRepeatWindow is how long an identical memberlist message (digits
// ignored) is suppressed after it was logged.
const logRepeatWindow = 30 * time.Second

// keyMismatchHint is added to memberlist's decryption errors.
const keyMismatchHint = "a node with another cluster secret (gossip key), or an insecure node, is talking to this one; it is not admitted. Give every node the same --secret-file"

// joinKeyHint is added to join failures caused by another key.
const joinKeyHint = "the seed has another cluster secret (gossip key), or only one side has one; give every node the same --secret-file"

// newMemberlistLogger returns the *log.Logger handed to memberlist. Its
// lines ("[WARN] memberlist: ...") become records of the matching level
// on logger's handler, tagged lib=memberlist, with repeats
// rate-limited.
func newMemberlistLogger(logger *slog.Logger) *log.Logger {
	h := &memberlistHandler{
		next: logger.Handler().WithAttrs([]slog.Attr{slog.String("lib", "memberlist")}),
		rl:   &rateLimiter{window: logRepeatWindow, seen: map[string]*repeat{}},
	}
	return slog.NewLogLogger(h, slog.LevelInfo)
}

// memberlistHandler is a slog.Handler that parses memberlist's level
// prefixes; it only receives records from slog.NewLogLogger.
type memberlistHandler struct {
	next slog.Handler
	rl   *rateLimiter
}

func (h *memberlistHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *memberlistHandler) Handle(ctx context.Context, r slog.Record) error {
	level, msg := parseMemberlistLine(r.Message)
	if !h.next.Enabled(ctx, level) {
		return nil
	}
	suppressed, ok := h.rl.allow(level.String()+" "+maskDigits(msg), r.Time)
	if !ok {
		return nil
	}
	out := slog.NewRecord(r.Time, level, msg, r.PC)
	if suppressed > 0 {
		out.AddAttrs(slog.Int("suppressed", suppressed))
	}
	if isKeyMismatch(msg) {
		out.AddAttrs(slog.String("hint", keyMismatchHint))
	}
	return h.next.Handle(ctx, out)
}

func (h *memberlistHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &memberlistHandler{next: h.next.WithAttrs(as), rl: h.rl}
}

func (h *memberlistHandler) WithGroup(name string) slog.Handler {
	return &memberlistHandler{next: h.next.WithGroup(name), rl: h.rl}
}

// parseMemberlistLine splits "[LEVEL] memberlist: text\n" into a level and
// the text. memberlist's DEBUG lines (every stream and push/pull) go to
// slog's Debug level.
func parseMemberlistLine(line string) (slog.Level, string) {
	line = strings.TrimRight(line, "\n")
	level := slog.LevelInfo
	for _, p := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelError},
		{"[ERROR]", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(line, p.prefix); ok {
			level, line = p.level, strings.TrimSpace(rest)
			break
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	return level, line
}

func isKeyMismatch(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "decrypt") || strings.Contains(m, "encryption is not configured") ||
		strings.Contains(m, "not encrypted")
}

// maskDigits replaces runs of digits so messages that differ only in
// addresses, ports or counters share a rate-limit key.
func maskDigits(s string) string {
	var b strings.Builder
	prevDigit := false
	for _, r := range s {
		d := r >= '0' && r <= '9'
		if d && !prevDigit {
			b.WriteByte('#')
		} else if !d {
			b.WriteRune(r)
		}
		prevDigit = d
	}
	return b.String()
}

// rateLimiter lets one message per key through per window and counts the
// rest.
type rateLimiter struct {
	window time.Duration

	mu   sync.Mutex
	seen map[string]*repeat
}

type repeat struct {
	last       time.Time
	suppressed int
}

// allow reports whether a message with key may be logged at now, and how
// many were suppressed since the last one logged.
func (l *rateLimiter) allow(key string, now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.seen[key]
	if r == nil {
		if len(l.seen) >= 1024 {
			clear(l.seen)
		}
		l.seen[key] = &repeat{last: now}
		return 0, true
	}
	if now.Sub(r.last) < l.window {
		r.suppressed++
		return 0, false
	}
	suppressed, r.suppressed, r.last = r.suppressed, 0, now
	return suppressed, true
}
