package netlab

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// udpAt is a UDP socket on the WireGuard port of a node.
func udpAt(t *testing.T, n *Node) net.PacketConn {
	t.Helper()
	c, err := ListenPacket(n.Netns, "udp4", ":6784")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sendTo(t *testing.T, c net.PacketConn, to netip.AddrPort) {
	t.Helper()
	if _, err := c.WriteTo([]byte("punch"), net.UDPAddrFromAddrPort(to)); err != nil {
		t.Fatal(err)
	}
}

// recvFrom returns the source of the next datagram on c, the zero
// AddrPort if none comes within 500 ms.
func recvFrom(t *testing.T, c net.PacketConn) netip.AddrPort {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 64)
	_, from, err := c.ReadFrom(buf)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return netip.AddrPort{}
	}
	if err != nil {
		t.Fatal(err)
	}
	ap := from.(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func TestNATSites(t *testing.T) {
	lab := NewForTest(t, Config{})
	observers, err := lab.AddNodes(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	var nodes [3]*Node
	var sites [3]int
	for i, sym := range []bool{false, false, true} {
		if sites[i], err = lab.AddNATSite(NATConfig{Symmetric: sym}); err != nil {
			t.Fatal(err)
		}
		if nodes[i], err = lab.AddNode(sites[i]); err != nil {
			t.Fatal(err)
		}
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	o1, o2 := udpAt(t, observers[0]), udpAt(t, observers[1])
	ua, ub, uc := udpAt(t, a), udpAt(t, b), udpAt(t, c)
	wg := func(n *Node) netip.AddrPort { return netip.AddrPortFrom(n.Addr, WGPort) }

	// What two peers on the open network see of each NAT'ed node.
	seen := map[*Node][2]netip.AddrPort{}
	for _, x := range []struct {
		n *Node
		u net.PacketConn
	}{{a, ua}, {b, ub}, {c, uc}} {
		sendTo(t, x.u, wg(observers[0]))
		sendTo(t, x.u, wg(observers[1]))
		seen[x.n] = [2]netip.AddrPort{recvFrom(t, o1), recvFrom(t, o2)}
	}
	for i, n := range []*Node{a, b} {
		want := netip.AddrPortFrom(lab.PublicAddr(sites[i]), ConeBasePort+1)
		if s := seen[n]; s[0] != want || s[1] != want {
			t.Errorf("cone NAT: peers see %s at %v, want %s for both", n.Name, s, want)
		}
	}
	if s := seen[c]; s[0].Addr() != lab.PublicAddr(sites[2]) || s[0] == s[1] || !s[1].IsValid() {
		t.Errorf("symmetric NAT: peers see %s at %v, want two ports of %s", c.Name, s, lab.PublicAddr(sites[2]))
	}
	// Answers get in; the same from a stranger does not.
	sendTo(t, o1, seen[a][0])
	if got := recvFrom(t, ua); got != wg(observers[0]) {
		t.Errorf("%s got the answer of %s from %v, want %s", a.Name, observers[0].Name, got, wg(observers[0]))
	}

	// Punching between the cone NATs: b's packet dies at a's router (a
	// never sent to b) but opens b's; then a's gets in, and b's answer.
	sendTo(t, ub, seen[a][0])
	if got := recvFrom(t, ua); got.IsValid() {
		t.Errorf("an unsolicited packet got through a cone NAT, from %s", got)
	}
	sendTo(t, ua, seen[b][0])
	if got := recvFrom(t, ub); got != seen[a][0] {
		t.Errorf("punch %s -> %s: got %v, want a packet from %s", a.Name, b.Name, got, seen[a][0])
	}
	sendTo(t, ub, seen[a][0])
	if got := recvFrom(t, ua); got != seen[b][0] {
		t.Errorf("punch %s -> %s: got %v, want a packet from %s", b.Name, a.Name, got, seen[b][0])
	}

	// Symmetric NAT: each side sends to where the other was seen, and
	// neither gets in.
	sendTo(t, ua, seen[c][0])
	sendTo(t, uc, seen[a][0])
	sendTo(t, ua, seen[c][0])
	if got := recvFrom(t, ua); got.IsValid() {
		t.Errorf("%s got a packet from %s across a symmetric NAT", a.Name, got)
	}
	if got := recvFrom(t, uc); got.IsValid() {
		t.Errorf("%s got a packet from %s across its symmetric NAT", c.Name, got)
	}

	// A cut between a public node and a NAT'ed one sits in the NAT router.
	if err := lab.Cut(observers[0], a); err != nil {
		t.Fatal(err)
	}
	sendTo(t, ua, wg(observers[0]))
	if got := recvFrom(t, o1); got.IsValid() {
		t.Errorf("cut %s-%s: a packet got through from %s", observers[0].Name, a.Name, got)
	}
	if err := lab.Heal(observers[0], a); err != nil {
		t.Fatal(err)
	}
	sendTo(t, ua, wg(observers[0]))
	if got := recvFrom(t, o1); got != seen[a][0] {
		t.Errorf("healed %s-%s: got %v, want a packet from %s", observers[0].Name, a.Name, got, seen[a][0])
	}
	if err := lab.Cut(a, b); err == nil {
		t.Error("a cut between two NAT'ed sites was accepted; no router there sees both nodes")
	}
}
