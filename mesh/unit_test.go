package mesh

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseMemberlistLine(t *testing.T) {
	tests := []struct {
		in    string
		level slog.Level
		msg   string
	}{
		{"[DEBUG] memberlist: Stream connection from=1.2.3.4:5\n", slog.LevelDebug, "Stream connection from=1.2.3.4:5"},
		{"[INFO] memberlist: Suspect n3 has failed", slog.LevelInfo, "Suspect n3 has failed"},
		{"[WARN] memberlist: Refuting a suspect message", slog.LevelWarn, "Refuting a suspect message"},
		{"[ERR] memberlist: failed to receive: x", slog.LevelError, "failed to receive: x"},
		{"[ERR] Failed to shutdown transport: x", slog.LevelError, "Failed to shutdown transport: x"},
		{"no prefix at all", slog.LevelInfo, "no prefix at all"},
	}
	for _, tt := range tests {
		level, msg := parseMemberlistLine(tt.in)
		if level != tt.level || msg != tt.msg {
			t.Errorf("parseMemberlistLine(%q) = %v %q, want %v %q", tt.in, level, msg, tt.level, tt.msg)
		}
	}
}

func TestMemberlistLoggerRateLimits(t *testing.T) {
	var buf bytes.Buffer
	l := newMemberlistLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))
	for i := range 50 {
		l.Printf("[ERR] memberlist: failed to receive: No installed keys could decrypt the message from=10.0.0.%d:%d", i, 4000+i)
	}
	l.Printf("[DEBUG] memberlist: chatty")
	l.Printf("[WARN] memberlist: something else")
	out := buf.String()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines (one decrypt error, one warning), got:\n%s", out)
	}
	if !strings.Contains(lines[0], "level=ERROR") || !strings.Contains(lines[0], "lib=memberlist") || !strings.Contains(lines[0], "hint=") {
		t.Errorf("decrypt error line lacks level, component or hint: %s", lines[0])
	}
	if !strings.Contains(lines[1], "level=WARN") {
		t.Errorf("second line: %s", lines[1])
	}
}

func TestRateLimiter(t *testing.T) {
	rl := &rateLimiter{window: time.Minute, seen: map[string]*repeat{}}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		key            string
		at             time.Duration
		wantOK         bool
		wantSuppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", time.Second, true, 0},
		{"a", 2 * time.Second, false, 0},
		{"a", 61 * time.Second, true, 2},
		{"a", 62 * time.Second, false, 0},
	}
	for i, s := range steps {
		sup, ok := rl.allow(s.key, t0.Add(s.at))
		if ok != s.wantOK || sup != s.wantSuppressed {
			t.Errorf("step %d: allow(%s) = %d %v, want %d %v", i, s.key, sup, ok, s.wantSuppressed, s.wantOK)
		}
	}
	if got := maskDigits("from=10.0.0.1:6783 n12"); got != "from=#.#.#.#:# n#" {
		t.Errorf("maskDigits = %q", got)
	}
}

func TestEventQueueCoalesces(t *testing.T) {
	ev := func(typ EventType, name, endpoint string) Event {
		return Event{Type: typ, Peer: Peer{Name: name, Meta: Meta{Endpoint: endpoint}}}
	}
	tests := []struct {
		name string
		in   []Event
		want []Event
	}{
		{"distinct peers keep order", []Event{ev(EventJoin, "a", ""), ev(EventJoin, "b", ""), ev(EventLeave, "c", "")},
			[]Event{ev(EventJoin, "a", ""), ev(EventJoin, "b", ""), ev(EventLeave, "c", "")}},
		{"join then update stays join", []Event{ev(EventJoin, "a", "1"), ev(EventUpdate, "a", "2")},
			[]Event{ev(EventJoin, "a", "2")}},
		{"update then update", []Event{ev(EventUpdate, "a", "1"), ev(EventJoin, "b", ""), ev(EventUpdate, "a", "2")},
			[]Event{ev(EventUpdate, "a", "2"), ev(EventJoin, "b", "")}},
		{"join then leave is leave", []Event{ev(EventJoin, "a", "1"), ev(EventLeave, "a", "1")},
			[]Event{ev(EventLeave, "a", "1")}},
		{"leave then join is join", []Event{ev(EventLeave, "a", "1"), ev(EventJoin, "a", "2")},
			[]Event{ev(EventJoin, "a", "2")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newEventQueue()
			for _, e := range tt.in {
				q.push(e)
			}
			var got []Event
			for {
				e, ok := q.pop()
				if !ok {
					break
				}
				got = append(got, e)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestNormalizeSeeds(t *testing.T) {
	tests := []struct {
		in      []string
		want    []string
		wantErr bool
	}{
		{[]string{"10.0.0.1", "10.0.0.2:7000", "node-a", "node-b:1", ""}, []string{"10.0.0.1:6783", "10.0.0.2:7000", "node-a:6783", "node-b:1"}, false},
		{[]string{"fd00::1", "[fd00::2]", "[fd00::3]:99"}, []string{"[fd00::1]:6783", "[fd00::2]:6783", "[fd00::3]:99"}, false},
		{[]string{"host:0"}, nil, true},
		{[]string{"host:http"}, nil, true},
		{[]string{":6783"}, nil, true},
	}
	for _, tt := range tests {
		got, err := normalizeSeeds(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("normalizeSeeds(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"no name", func(c *Config) { c.NodeName = "" }, "node name"},
		{"short key", func(c *Config) { c.Key = []byte("short") }, "gossip key"},
		{"meta name", func(c *Config) { c.Meta.Name = "other" }, "differs"},
		{"big meta", func(c *Config) { c.Meta.Endpoint = strings.Repeat("x", 600) }, "more than"},
		{"probe timeout", func(c *Config) { c.ProbeTimeout = 2 * c.ProbeInterval }, "probe timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			c.NodeName = "n1"
			tt.mod(&c)
			err := c.validate()
			if tt.wantErr == "" {
				if err != nil || c.Meta.Name != "n1" || c.Logger == nil {
					t.Fatalf("validate = %v, config %+v", err, c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("validate = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFailureDetectionTime(t *testing.T) {
	c := DefaultConfig()
	tests := []struct {
		n    int
		want time.Duration
	}{
		{1, 7 * time.Second},
		{3, 7 * time.Second},
		{10, 7 * time.Second},
		{100, 11 * time.Second},
	}
	for _, tt := range tests {
		if got := c.FailureDetectionTime(tt.n); got != tt.want {
			t.Errorf("FailureDetectionTime(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}
