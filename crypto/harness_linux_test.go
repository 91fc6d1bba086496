package crypto

// The harness of the root tests: children in network namespaces, namespaces,
// an underlay between them.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// The root tests run each tunnel in a child process (this test binary
// re-executed) that lives in a throwaway network namespace, because
// wireguard-go opens and reopens its UDP sockets from whatever thread it
// happens to run on: only a process wholly inside the namespace keeps them
// there, as the daemon does on a node.

// childEnv carries a childConfig to the re-executed test binary.
const childEnv = "WEFT_CRYPTO_TUNNEL_CHILD"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(runChild(cfg))
	}
	os.Exit(m.Run())
}

// childConfig is what a child process sets up.
type childConfig struct {
	Name       string
	Mode       string
	PrivateKey string
	ListenPort int
	Addr       string // CIDR on the tunnel, optional
	Route      string // CIDR routed through the tunnel, optional
	Peer       *childPeer
}

type childPeer struct {
	PublicKey    string
	PresharedKey string
	Endpoint     string
	AllowedIP    string
}

// childReady is the child's first line on stdout.
type childReady struct {
	Mode  string
	Index int
	Err   string
}

// runChild opens a tunnel as told, reports, answers "device" requests on
// stdin with the device as JSON, and closes the tunnel at EOF.
func runChild(cfgJSON string) int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	out := json.NewEncoder(os.Stdout)
	var cfg childConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		out.Encode(childReady{Err: err.Error()})
		return 1
	}
	baseline := runtime.NumGoroutine()
	tun, err := childOpen(cfg, logger)
	if err != nil {
		out.Encode(childReady{Err: err.Error()})
		return 1
	}
	out.Encode(childReady{Mode: tun.Mode(), Index: tun.LinkIndex()})
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 1<<20)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "device":
			dev, err := tun.Device()
			if err != nil {
				logger.Error("read device", "err", err)
				dev = nil
			}
			out.Encode(dev)
		case "wait-done":
			reply := childReady{Mode: "done"}
			select {
			case <-tun.Done():
			case <-time.After(10 * time.Second):
				reply.Err = "the device did not stop"
			}
			out.Encode(reply)
		case "handover":
			// Detach and open again on the handed-over TUN in this
			// process: what a successor does with the file it received.
			reply := childReady{}
			h, err := tun.Detach()
			if err == nil {
				var next *Tunnel
				key, _ := wgtypes.ParseKey(cfg.PrivateKey)
				next, err = OpenTunnel(TunnelConfig{Name: cfg.Name, Mode: cfg.Mode, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: logger, Handover: h})
				if err == nil {
					tun = next
				}
			}
			if err != nil {
				reply.Err = err.Error()
				out.Encode(reply)
				return 1
			}
			reply.Mode, reply.Index = tun.Mode(), tun.LinkIndex()
			out.Encode(reply)
		case "configure":
			var wcfg wgtypes.Config
			err := json.Unmarshal([]byte(arg), &wcfg)
			if err == nil {
				err = tun.Configure(wcfg)
			}
			reply := childReady{Mode: tun.Mode()}
			if err != nil {
				reply.Err = err.Error()
			}
			out.Encode(reply)
		}
	}
	if err := tun.Close(); err != nil {
		logger.Error("close", "err", err)
		return 1
	}
	return checkGoroutines(baseline, logger)
}

// checkGoroutines waits for the goroutines started since baseline to end, as
// they must after Tunnel.Close, and fails the child with their stacks if they
// do not.
func checkGoroutines(baseline int, logger *slog.Logger) int {
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			logger.Error("goroutines leaked by Tunnel.Close", "count", runtime.NumGoroutine()-baseline,
				"stacks", string(buf[:runtime.Stack(buf, true)]))
			return 2
		}
		runtime.Gosched()
	}
	return 0
}

func childOpen(cfg childConfig, logger *slog.Logger) (*Tunnel, error) {
	key, err := wgtypes.ParseKey(cfg.PrivateKey)
	if err != nil {
		return nil, err
	}
	tun, err := OpenTunnel(TunnelConfig{Name: cfg.Name, Mode: cfg.Mode, PrivateKey: key, ListenPort: cfg.ListenPort, Logger: logger})
	if err != nil {
		return nil, err
	}
	if err := childSetUp(tun, cfg); err != nil {
		tun.Close()
		return nil, err
	}
	return tun, nil
}

func childSetUp(tun *Tunnel, cfg childConfig) error {
	if p := cfg.Peer; p != nil {
		pub, err := wgtypes.ParseKey(p.PublicKey)
		if err != nil {
			return err
		}
		psk, err := wgtypes.ParseKey(p.PresharedKey)
		if err != nil {
			return err
		}
		ep, err := net.ResolveUDPAddr("udp", p.Endpoint)
		if err != nil {
			return err
		}
		_, allowed, err := net.ParseCIDR(p.AllowedIP)
		if err != nil {
			return err
		}
		if err := tun.Configure(wgtypes.Config{Peers: []wgtypes.PeerConfig{{
			PublicKey: pub, PresharedKey: &psk, Endpoint: ep, AllowedIPs: []net.IPNet{*allowed},
		}}}); err != nil {
			return fmt.Errorf("configure peer: %w", err)
		}
	}
	link, err := netlink.LinkByIndex(tun.LinkIndex())
	if err != nil {
		return err
	}
	if cfg.Addr != "" {
		addr, err := netlink.ParseAddr(cfg.Addr)
		if err != nil {
			return err
		}
		if err := netlink.AddrReplace(link, addr); err != nil {
			return fmt.Errorf("add address: %w", err)
		}
	}
	if cfg.Route != "" {
		_, dst, err := net.ParseCIDR(cfg.Route)
		if err != nil {
			return err
		}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst}); err != nil {
			return fmt.Errorf("add route: %w", err)
		}
	}
	return nil
}

// child is a running child process seen from the test.
type child struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *json.Decoder
	stderr *lockedBuffer
	ready  childReady
	done   chan error
}

// lockedBuffer collects a child's log, written by exec's copying goroutine.
type lockedBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{} // closed and replaced at every write
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.changed != nil {
		close(b.changed)
		b.changed = nil
	}
	return b.buf.Write(p)
}

// waitFor reports whether s appears in the buffer within timeout.
func (b *lockedBuffer) waitFor(s string, timeout time.Duration) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		if strings.Contains(b.buf.String(), s) {
			b.mu.Unlock()
			return true
		}
		if b.changed == nil {
			b.changed = make(chan struct{})
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return false
		}
	}
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startChild runs a child in netNS and waits for its report. The child is
// killed at cleanup if still running; its log is shown if the test failed.
func startChild(t *testing.T, netNS ns.NetNS, cfg childConfig) *child {
	t.Helper()
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &child{t: t, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(os.Environ(), childEnv+"="+string(cfgJSON))
	c.cmd.Stderr = c.stderr
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	// Our own pipe rather than StdoutPipe: Wait, running in the background,
	// must not close it before we read what the child said before exiting.
	stdout, stdoutW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close() })
	c.cmd.Stdout = stdoutW
	c.stdout = json.NewDecoder(stdout)
	// Forked from a thread inside netNS, the child starts there.
	err = netNS.Do(func(ns.NetNS) error { return c.cmd.Start() })
	stdoutW.Close()
	if err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.done
		c.done <- nil // for later waits
		if t.Failed() {
			t.Logf("log of child %s:\n%s", cfg.Name, c.stderr.String())
		}
	})
	if err := c.stdout.Decode(&c.ready); err != nil {
		t.Fatalf("child %s did not report: %v\n%s", cfg.Name, err, c.stderr.String())
	}
	return c
}

// device asks the child for its Tunnel.Device().
func (c *child) device() *wgtypes.Device {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, "device\n"); err != nil {
		c.t.Fatal(err)
	}
	var dev *wgtypes.Device
	if err := c.stdout.Decode(&dev); err != nil {
		c.t.Fatal(err)
	}
	if dev == nil {
		c.t.Fatal("child could not read its device")
	}
	return dev
}

// configure has the child call Tunnel.Configure(cfg).
func (c *child) configure(cfg wgtypes.Config) {
	c.t.Helper()
	data, err := json.Marshal(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := fmt.Fprintf(c.stdin, "configure %s\n", data); err != nil {
		c.t.Fatal(err)
	}
	var reply childReady
	if err := c.stdout.Decode(&reply); err != nil {
		c.t.Fatal(err)
	}
	if reply.Err != "" {
		c.t.Fatalf("configure: %s", reply.Err)
	}
}

// handover has the child detach its tunnel and open it again on the
// handed-over TUN.
func (c *child) handover() childReady {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, "handover\n"); err != nil {
		c.t.Fatal(err)
	}
	var r childReady
	if err := c.stdout.Decode(&r); err != nil {
		c.t.Fatalf("handover: %v", err)
	}
	return r
}

// waitDone asks the child to wait for Tunnel.Done.
func (c *child) waitDone() error {
	c.t.Helper()
	if _, err := io.WriteString(c.stdin, "wait-done\n"); err != nil {
		c.t.Fatal(err)
	}
	var reply childReady
	if err := c.stdout.Decode(&reply); err != nil {
		c.t.Fatal(err)
	}
	if reply.Err != "" {
		return errors.New(reply.Err)
	}
	return nil
}

// stop closes the child's stdin, so that it closes its tunnel and exits.
func (c *child) stop() {
	c.t.Helper()
	c.stdin.Close()
	select {
	case err := <-c.done:
		c.done <- err
		if err != nil {
			c.t.Fatalf("child exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		c.t.Fatal("child did not exit")
	}
}

// kill kills the child at once, like a crash of the daemon.
func (c *child) kill() {
	c.t.Helper()
	c.cmd.Process.Kill()
	c.done <- <-c.done
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and tunnel devices")
	}
}

// newNS makes a throwaway network namespace, removed at cleanup.
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		testutils.UnmountNS(n)
	})
	return n
}

// nlHandle is a netlink handle working inside n.
func nlHandle(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(n.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// uniqueName is a tunnel name no other test uses, so that UAPI sockets in
// /var/run/wireguard do not collide.
func uniqueName(t *testing.T) string {
	b := make([]byte, 3)
	rand.Read(b)
	name := "wgt" + hex.EncodeToString(b)
	t.Cleanup(func() { os.Remove(uapiSocketPath(name)) })
	return name
}

func mustParseKey(t *testing.T, s string) wgtypes.Key {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newKey(t *testing.T) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// underlay joins a and b with a veth pair addressed aAddr and bAddr.
func underlay(t *testing.T, a, b ns.NetNS, aAddr, bAddr string) {
	t.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "ula", Namespace: netlink.NsFd(int(a.Fd()))},
		PeerName:      "ulb",
		PeerNamespace: netlink.NsFd(int(b.Fd())),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth: %v", err)
	}
	for _, side := range []struct {
		n          ns.NetNS
		name, addr string
	}{{a, "ula", aAddr}, {b, "ulb", bAddr}} {
		h := nlHandle(t, side.n)
		link, err := h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		addr, err := netlink.ParseAddr(side.addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrAdd(link, addr); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
}
