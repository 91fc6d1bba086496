package netlab

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Lab is a cluster on one machine. Its methods are safe for concurrent use.
type Lab struct {
	// Prefix starts the name of everything the lab made.
	Prefix string
	// Dir is the lab's directory (nodes' state, logs, CNI binaries).
	Dir string
	// Underlay is the path of the underlay network namespace.
	Underlay string

	weft      string
	log       *slog.Logger
	cniBinDir string

	mu        sync.Mutex
	secret    []byte
	router    string // router netns path; "" while there is one site
	sites     []*site
	nodes     []*Node
	pods      []*Pod
	procs     map[*Process]struct{}
	netnses   []string // every netns made, in order
	registry  string   // registry entry, once made
	ownDir    bool     // Dir was made by this lab
	closed    bool
	closeErr  error
	closeOnce sync.Once
}

type site struct {
	index  int
	nat    bool
	bridge string
	next   byte // last host number handed out
	// Of a site behind a NAT router of its own (AddNATSite): the
	// router's netns, its public address on site 0, and its NAT.
	router string
	public netip.Addr
	natCfg NATConfig
}

// sitePrefix is the underlay subnet of site s.
func sitePrefix(s int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 30, byte(s), 0}), 24)
}

// siteRouter is the router's address on site s.
func siteRouter(s int) netip.Addr { return netip.AddrFrom4([4]byte{172, 30, byte(s), 254}) }

// New builds a lab with the underlay and site 0 and no nodes yet. On error
// everything made so far is removed.
func New(ctx context.Context, cfg Config) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Prefix == "" {
		b := make([]byte, 3)
		rand.Read(b)
		cfg.Prefix = NamePrefix + hex.EncodeToString(b)
	}
	if !strings.HasPrefix(cfg.Prefix, NamePrefix) || strings.ContainsAny(cfg.Prefix, "/ ") {
		return nil, fmt.Errorf("lab prefix %q must start with %q and hold no '/' or space", cfg.Prefix, NamePrefix)
	}
	if cfg.WeftBinary == "" {
		cfg.WeftBinary = os.Getenv("WEFT_BINARY")
	}
	if cfg.WeftBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find the weft binary (set Config.WeftBinary or $WEFT_BINARY): %w", err)
		}
		cfg.WeftBinary = exe
	}
	weft, err := filepath.Abs(cfg.WeftBinary)
	if err != nil {
		return nil, fmt.Errorf("weft binary %q: %w", cfg.WeftBinary, err)
	}
	if cfg.Dir == "" {
		cfg.Dir = os.TempDir()
	}
	l := &Lab{
		Prefix: cfg.Prefix,
		Dir:    filepath.Join(cfg.Dir, cfg.Prefix),
		weft:   weft,
		log:    cfg.Logger.With("lab", cfg.Prefix),
		procs:  map[*Process]struct{}{},
	}
	if err := l.setup(ctx); err != nil {
		return nil, errors.Join(err, l.Close())
	}
	l.log.Info("lab ready", "dir", l.Dir, "underlay", l.Underlay)
	return l, nil
}

func (l *Lab) setup(ctx context.Context) error {
	if err := l.register(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(l.Dir), 0o755); err != nil {
		return fmt.Errorf("create lab base dir: %w", err)
	}
	if err := os.Mkdir(l.Dir, 0o755); err != nil {
		return fmt.Errorf("create lab dir (another lab with prefix %s? pick another or run weft netlab-clean): %w", l.Prefix, err)
	}
	l.ownDir = true
	if err := os.WriteFile(filepath.Join(l.Dir, labMarker), []byte(l.Prefix+"\n"), 0o644); err != nil {
		return fmt.Errorf("mark lab dir: %w", err)
	}
	if err := os.MkdirAll(wgRunDir, 0o755); err != nil {
		return fmt.Errorf("create %s (mount point of the nodes' own WireGuard sockets): %w", wgRunDir, err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	l.secret = []byte(base64.StdEncoding.EncodeToString(secret))
	if err := l.makeCNIBinDir(); err != nil {
		return err
	}
	ul, err := l.newNetns("ul")
	if err != nil {
		return err
	}
	l.Underlay = ul
	if err := sysctls(ul, map[string]string{"net/ipv4/ip_forward": "0"}); err != nil {
		return err
	}
	if err := withHandle(ul, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	}); err != nil {
		return fmt.Errorf("underlay lo up: %w", err)
	}
	_, err = l.addSiteLocked(false)
	return err
}

// registration is what a lab writes to the registry: who owns it and where
// its files are.
type registration struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"` // start time of Pid, to survive pid reuse
	Dir   string `json:"dir"`
}

const labMarker = ".weftlab"

func (l *Lab) register() error {
	start, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	b, _ := json.Marshal(registration{Pid: os.Getpid(), Start: start, Dir: l.Dir})
	if err := os.MkdirAll(registryDir, 0o755); err != nil {
		return fmt.Errorf("create lab registry: %w", err)
	}
	// Under the lock, CleanAll sees this lab either not at all (and none of
	// its namespaces) or registered.
	unlock, err := lockRegistry()
	if err != nil {
		return err
	}
	defer unlock()
	path := filepath.Join(registryDir, l.Prefix+".json")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("register lab (another lab with prefix %s? pick another or run weft netlab-clean): %w", l.Prefix, err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("register lab: %w", err)
	}
	l.registry = path
	return nil
}

// newNetns creates PREFIX-suffix and remembers it for Close.
func (l *Lab) newNetns(suffix string) (string, error) {
	path, err := createNetns(l.Prefix + "-" + suffix)
	if err != nil {
		return "", err
	}
	l.netnses = append(l.netnses, path)
	// IPv6 is off in the underlay, router and nodes, so captures and
	// tests see only the IPv4 traffic they made (no router solicitations).
	return path, sysctls(path, map[string]string{
		"net/ipv6/conf/all/disable_ipv6":     "1",
		"net/ipv6/conf/default/disable_ipv6": "1",
	})
}

func (l *Lab) makeCNIBinDir() error {
	l.cniBinDir = filepath.Join(l.Dir, "cni-bin")
	if err := os.MkdirAll(l.cniBinDir, 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir: %w", err)
	}
	if err := os.Symlink(l.weft, filepath.Join(l.cniBinDir, "weft-cni")); err != nil {
		return fmt.Errorf("link weft-cni: %w", err)
	}
	ents, _ := os.ReadDir(debianCNIDir)
	for _, e := range ents {
		if e.IsDir() || e.Name() == "weft-cni" {
			continue
		}
		if err := os.Symlink(filepath.Join(debianCNIDir, e.Name()), filepath.Join(l.cniBinDir, e.Name())); err != nil {
			return fmt.Errorf("link CNI plugin %s: %w", e.Name(), err)
		}
	}
	return nil
}

// debianCNIDir holds Debian's reference CNI plugins (package containernetworking-plugins).
const debianCNIDir = "/usr/lib/cni"

// CNIBinDir is the directory of CNI plugins of the lab: weft-cni (the weft
// binary) and the reference plugins found in /usr/lib/cni.
func (l *Lab) CNIBinDir() string { return l.cniBinDir }

// WeftBinary is the weft binary the lab runs.
func (l *Lab) WeftBinary() string { return l.weft }

// Secret is the cluster secret written to every node's secret file.
func (l *Lab) Secret() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.secret...)
}

// Router is the path of the router network namespace, "" while the lab has
// a single site.
func (l *Lab) Router() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.router
}

// Nodes returns the nodes in the order they were added.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// Node returns the node with that name, nil if there is none.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// AddNodes adds count nodes to site.
func (l *Lab) AddNodes(site, count int) ([]*Node, error) {
	var nodes []*Node
	for range count {
		n, err := l.AddNode(site)
		if err != nil {
			return nodes, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// AddSite adds a site (a bridge of its own, joined to the others only
// through the router) and returns its index. With nat the router masquerades
// what leaves the site and lets no connection in, like a NAT gateway.
func (l *Lab) AddSite(nat bool) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return 0, errors.New("lab is closed")
	}
	return l.addSiteLocked(nat)
}

func (l *Lab) addSiteLocked(nat bool) (int, error) {
	s := &site{index: len(l.sites), nat: nat, bridge: fmt.Sprintf("br%d", len(l.sites))}
	if s.index > 253 {
		return 0, errors.New("too many sites")
	}
	if s.index == 0 && nat {
		return 0, errors.New("site 0 is the open network and cannot be behind NAT")
	}
	err := withHandle(l.Underlay, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.bridge}}
		if err := h.LinkAdd(br); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
	if err != nil {
		return 0, fmt.Errorf("create bridge of site %d: %w", s.index, err)
	}
	l.sites = append(l.sites, s)
	if s.index == 0 {
		return 0, nil
	}
	if l.router == "" {
		rt, err := l.newNetns("rt")
		if err != nil {
			return 0, err
		}
		l.router = rt
		if err := sysctls(rt, map[string]string{"net/ipv4/ip_forward": "1"}); err != nil {
			return 0, err
		}
		if err := l.addRouterLeg(l.sites[0]); err != nil {
			return 0, err
		}
		// Nodes of site 0 had no way out until now.
		for _, n := range l.nodes {
			if n.Site != 0 {
				continue
			}
			if err := n.addDefaultRoute(); err != nil {
				return 0, err
			}
		}
	}
	if err := l.addRouterLeg(s); err != nil {
		return 0, err
	}
	if nat {
		if err := natSite(l.router, s.index); err != nil {
			return 0, fmt.Errorf("NAT of site %d: %w", s.index, err)
		}
	}
	l.log.Info("site added", "site", s.index, "nat", nat, "cidr", sitePrefix(s.index))
	return s.index, nil
}

// addRouterLeg joins the router to the bridge of s with address .254.
func (l *Lab) addRouterLeg(s *site) error {
	leg := fmt.Sprintf("s%d", s.index)
	port := fmt.Sprintf("r%d", s.index)
	addr := netip.PrefixFrom(siteRouter(s.index), 24)
	if err := l.veth(port, s.bridge, l.router, leg, addr); err != nil {
		return fmt.Errorf("router leg on site %d: %w", s.index, err)
	}
	return nil
}

// veth makes a veth pair: port in the underlay on bridge, peer named inner
// in netns path with addr, both up, and lo of that netns up.
func (l *Lab) veth(port, bridge, path, inner string, addr netip.Prefix) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer target.Close()
	err = withHandle(l.Underlay, func(h *netlink.Handle) error {
		br, err := h.LinkByName(bridge)
		if err != nil {
			return err
		}
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: port},
			PeerName:      inner,
			PeerNamespace: netlink.NsFd(target),
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s: %w", port, err)
		}
		link, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach %s to %s: %w", port, bridge, err)
		}
		return h.LinkSetUp(link)
	})
	if err != nil {
		return err
	}
	err = withHandle(path, func(h *netlink.Handle) error {
		link, err := h.LinkByName(inner)
		if err != nil {
			return err
		}
		ipn := &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("address %s on %s: %w", addr, inner, err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return err
		}
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
		return waitOperUp(h, inner)
	})
	if err != nil {
		return err
	}
	// The kernel turns carrier and the bridge port on a moment later
	// (linkwatch); frames sent before are lost.
	return withHandle(l.Underlay, func(h *netlink.Handle) error { return waitOperUp(h, port) })
}

// waitOperUp waits until the link's operational state is up.
func waitOperUp(h *netlink.Handle, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		link, err := h.LinkByName(name)
		if err != nil {
			return err
		}
		if link.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not up after 5s (state %s)", name, link.Attrs().OperState)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// withHandle runs f with a netlink handle inside the netns at path.
func withHandle(path string, f func(*netlink.Handle) error) error {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	return f(h)
}

// AddNode adds a node to site and returns it: a network namespace with eth0
// on the site's bridge, its own directory and a copy of the cluster secret.
func (l *Lab) AddNode(site int) (*Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errors.New("lab is closed")
	}
	if site < 0 || site >= len(l.sites) {
		return nil, fmt.Errorf("no site %d (the lab has %d; add one with AddSite)", site, len(l.sites))
	}
	s := l.sites[site]
	if s.next >= 253 {
		return nil, fmt.Errorf("site %d is full", site)
	}
	s.next++
	if site == 0 && l.isPublicAddr(netip.AddrFrom4([4]byte{172, 30, 0, s.next})) {
		s.next--
		return nil, errors.New("site 0 is full: its upper addresses belong to the NAT routers of other sites")
	}
	i := len(l.nodes) + 1
	n := &Node{
		Name: fmt.Sprintf("node%d", i),
		Site: site,
		Dir:  filepath.Join(l.Dir, fmt.Sprintf("node%d", i)),
		lab:  l,
		port: fmt.Sprintf("n%d", i),
	}
	a := sitePrefix(site).Addr().As4()
	a[3] = s.next
	n.Addr = netip.AddrFrom4(a)
	for _, d := range []string{n.Dir, n.StateDir(), n.RunDir(), n.wgDir(), n.cniCacheDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	if err := os.WriteFile(n.SecretFile(), l.secret, 0o600); err != nil {
		return nil, fmt.Errorf("write secret of %s: %w", n.Name, err)
	}
	path, err := l.newNetns(fmt.Sprintf("n%d", i))
	if err != nil {
		return nil, err
	}
	n.Netns = path
	if err := l.veth(n.port, s.bridge, path, "eth0", netip.PrefixFrom(n.Addr, 24)); err != nil {
		return nil, fmt.Errorf("wire %s: %w", n.Name, err)
	}
	if l.router != "" || s.router != "" {
		if err := n.addDefaultRoute(); err != nil {
			return nil, err
		}
	}
	if s.router != "" && !s.natCfg.Symmetric {
		if err := coneMapping(s, n, s.next); err != nil {
			return nil, err
		}
	}
	l.nodes = append(l.nodes, n)
	l.log.Info("node added", "node", n.Name, "site", site, "addr", n.Addr, "netns", path)
	return n, nil
}

func (n *Node) addDefaultRoute() error {
	gw := siteRouter(n.Site)
	err := withHandle(n.Netns, func(h *netlink.Handle) error {
		link, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		return h.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw.AsSlice()})
	})
	if err != nil {
		return fmt.Errorf("default route of %s via %s: %w", n.Name, gw, err)
	}
	return nil
}

// Close stops every process of the lab and removes its namespaces, links,
// mounts, files and registry entry. It is idempotent and does as much as it
// can after an error, returning all errors joined.
func (l *Lab) Close() error {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		procs := make([]*Process, 0, len(l.procs))
		for p := range l.procs {
			procs = append(procs, p)
		}
		netnses := append([]string(nil), l.netnses...)
		for _, p := range l.pods {
			netnses = append(netnses, p.Netns)
		}
		l.mu.Unlock()

		var errs []error
		for _, p := range procs {
			p.Kill()
		}
		for _, p := range procs {
			p.waitDone()
		}
		// Anything else still running in our namespaces (a tool started
		// by hand with nsenter, a plugin's child) goes too.
		if err := killInNetns(netnses, l.log); err != nil {
			errs = append(errs, err)
		}
		for i := len(netnses) - 1; i >= 0; i-- {
			if netnses[i] == "" {
				continue
			}
			if err := deleteNetns(netnses[i]); err != nil {
				errs = append(errs, err)
			}
		}
		if l.ownDir {
			if err := os.RemoveAll(l.Dir); err != nil {
				errs = append(errs, fmt.Errorf("remove lab dir: %w", err))
			}
		}
		if l.registry != "" {
			if err := os.Remove(l.registry); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		l.closeErr = errors.Join(errs...)
		l.log.Info("lab closed", "err", l.closeErr)
	})
	return l.closeErr
}

func (l *Lab) untrack(p *Process) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.procs, p)
}
