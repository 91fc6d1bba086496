//go:build linux

package tests

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/netlab"
)

// Pods through libcni and captures on the underlay.

// bridgeConfList is a reference bridge + host-local network, for testing
// the lab's libcni path without weft's own plugin.
func bridgeConfList(subnet, dataDir string) []byte {
	return []byte(fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "labnet",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "subnet": %q, "dataDir": %q, "routes": [{"dst": "0.0.0.0/0"}]}}
  ]
}`, subnet, dataDir))
}

func TestLabPodThroughLibcni(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		t.Skip("needs the reference CNI plugins in /usr/lib/cni (Debian package containernetworking-plugins)")
	}
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	// A long-running process of the node, started before the pod: it must
	// see the pod's netns appear and go (mount propagation).
	sleeper, err := n[0].Spawn(ctx, "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	conf := bridgeConfList("10.99.1.0/24", filepath.Join(n[0].Dir, "ipam"))
	pod, err := n[0].AddPod(ctx, netlab.PodConfig{Namespace: "default", Name: "web", NetConfList: conf})
	if err != nil {
		t.Fatal(err)
	}
	if !netip.MustParsePrefix("10.99.1.0/24").Contains(pod.IP()) {
		t.Fatalf("pod got %v, want an address of 10.99.1.0/24; result %+v", pod.IP(), pod.Result())
	}
	if !strings.Contains(pod.Netns, lab.Prefix+"-p-node1-web") {
		t.Errorf("pod netns %s", pod.Netns)
	}
	// The bridge plugin ran inside node1: cni0 is there, not on the host
	// nor on node2.
	if _, err := n[0].Exec(ctx, "ip", "link", "show", "cni0"); err != nil {
		t.Errorf("cni0 not in node1: %v", err)
	}
	if _, err := n[1].Exec(ctx, "ip", "link", "show", "cni0"); err == nil {
		t.Error("cni0 in node2")
	}
	reach(t, ctx, pod.Netns, netip.MustParseAddr("10.99.1.1")) // its gateway, on node1
	reach(t, ctx, pod.Netns, n[0].Addr)                        // node1's underlay address
	if _, err := pod.Exec(ctx, "ping", "-c", "1", "-W", "2", n[0].Addr.String()); err != nil {
		t.Error(err)
	}
	reach(t, ctx, pod.Netns, netip.MustParseAddr("127.0.0.1")) // lo is up
	if err := pod.Check(ctx); err != nil {
		t.Errorf("CNI CHECK: %v", err)
	}
	if err := n[0].CNIConfig().GetStatusNetworkList(ctx, pod.NetConfList()); err != nil {
		t.Errorf("CNI STATUS: %v", err)
	}
	name := filepath.Base(pod.Netns)
	if fs := statfsIn(t, ctx, sleeper.PID(), pod.Netns); fs != "nsfs" {
		t.Errorf("a node process started before the pod sees %s as %q, want nsfs", name, fs)
	}

	if err := pod.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pod.Delete(ctx); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, err := os.Stat(pod.Netns); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pod netns still there: %v", err)
	}
	if mountedIn(t, sleeper.PID(), name) {
		t.Errorf("the pod's netns is still mounted in a node process's view")
	}
	// host-local gave the address back.
	ents, _ := os.ReadDir(filepath.Join(n[0].Dir, "ipam", "labnet"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "10.") {
			t.Errorf("host-local still holds %s", e.Name())
		}
	}
}

// statfsIn returns the file system type of path as the process pid sees it.
func statfsIn(t *testing.T, ctx context.Context, pid int, path string) string {
	t.Helper()
	out, err := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(pid), "-m", "--", "stat", "-f", "-c", "%T", path).CombinedOutput()
	if err != nil {
		t.Fatalf("stat in pid %d: %v: %s", pid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// mountedIn reports whether a mount point containing name is in pid's view.
func mountedIn(t *testing.T, pid int, name string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), name)
}

func TestLabCapture(t *testing.T) {
	t.Parallel()
	lab := netlab.NewForTest(t, netlab.Config{})
	ctx := labCtx(t)
	n := addNodes(t, lab, 0, 2)
	s1, err := lab.AddSite(false)
	if err != nil {
		t.Fatal(err)
	}
	far := addNodes(t, lab, s1, 1)[0]
	c, err := lab.Capture(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := n[1].ListenPacket("udp", ":6784")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	conn, err := n[0].Dial(ctx, "udp", netip.AddrPortFrom(n[1].Addr, 6784).String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte("secret-payload-xyz")); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	buf := make([]byte, 100)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := pc.ReadFrom(buf); err != nil {
		t.Fatal(err)
	}
	reach(t, ctx, n[0].Netns, far.Addr)
	pkts := c.Stop()

	var udp, icmpIn, icmpOut int
	for _, p := range pkts {
		switch {
		case p.Proto == netlab.ProtoUDP && p.DstPort == 6784 && p.Src == n[0].Addr && p.Dst == n[1].Addr:
			udp++
			if !p.Contains([]byte("secret-payload-xyz")) || string(p.Payload) != "secret-payload-xyz" {
				t.Errorf("udp payload %q", p.Payload)
			}
			if p.Iface != n[0].Port() {
				t.Errorf("udp seen on %s, want %s", p.Iface, n[0].Port())
			}
		case p.Proto == netlab.ProtoICMP && p.Src == n[0].Addr && p.Dst == far.Addr:
			if p.Iface == n[0].Port() {
				icmpOut++
			} else {
				icmpIn++ // out of the router onto site 1
			}
		}
	}
	if udp != 1 {
		t.Errorf("saw the UDP datagram %d times, want once; %d frames", udp, len(pkts))
	}
	if icmpOut == 0 || icmpIn == 0 {
		t.Errorf("echo across sites seen %d times on node1's port and %d on the far side; want both", icmpOut, icmpIn)
	}
	if t.Failed() {
		for _, p := range pkts {
			t.Logf("%s %s %s:%d > %s:%d", p.Iface, p.Proto, p.Src, p.SrcPort, p.Dst, p.DstPort)
		}
	}
	path := filepath.Join(t.TempDir(), "cap.pcap")
	f, _ := os.Create(path)
	if err := netlab.WritePcap(f, pkts); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("tcpdump", "-nr", path).CombinedOutput(); err == nil && !strings.Contains(string(out), "6784") {
		t.Errorf("tcpdump reads back:\n%s", out)
	}
}
