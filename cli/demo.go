package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/netlab"
)

func newDemoCmd() *cobra.Command {
	d := &demo{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a whole weft cluster of 3 nodes in network namespaces on this machine (needs root)",
		Long: `Run a whole weft cluster on this machine: an underlay bridge in a network
namespace, one namespace per node with its own address, and weft daemon on
every node, joined by gossip and WireGuard (userspace). Needs root and nothing
but this binary. By default the demo prints what it built and tears it down;
with --keep it stays up until Ctrl-C so you can look around.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d.out = cmd.OutOrStdout()
			return d.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.BoolVar(&d.keep, "keep", false, "stay up until Ctrl-C, to poke at the cluster")
	f.IntVar(&d.size, "nodes", 3, "number of nodes")
	f.DurationVar(&d.wait, "wait", 15*time.Second, "how long to wait for the daemons to come up")
	f.BoolVar(&d.verbose, "verbose", false, "log what the lab does")
	return cmd
}

// demo is `weft demo`: a list of steps run in order on one lab. Add a
// section by writing a step method and listing it in steps.
type demo struct {
	out     io.Writer
	keep    bool
	size    int
	wait    time.Duration
	verbose bool

	lab    *netlab.Lab
	nodes  []*netlab.Node
	tunnel map[string]netip.Addr // node name -> tunnel address
	pods   []*netlab.Pod
}

type demoStep struct {
	title string
	run   func(context.Context) error
}

func (d *demo) steps() []demoStep {
	return []demoStep{
		{"Building the lab", d.buildLab},
		{"Starting weft daemon on every node", d.startDaemons},
		{"Waiting for the daemons", d.waitDaemons},
		{"Nodes", d.printNodes},
		{"Gossip and WireGuard: every node meshed", d.waitMesh},
		{"The peer table of every node (weft status peers)", d.printMesh},
		{"Ping between the nodes' tunnel addresses", d.pingNodes},
		{"Two pods on every node, through the weft CNI plugin", d.addPods},
		{"Ping matrix between all pods, while capturing on the underlay", d.pingPods},
	}
}

func (d *demo) run(ctx context.Context) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("weft demo needs root (network namespaces, mounts, nftables): run it with sudo")
	}
	if d.size < 1 || d.size > 250 {
		return fmt.Errorf("--nodes %d: want 1 to 250", d.size)
	}
	defer func() { err = errors.Join(err, d.teardown()) }()
	for _, s := range d.steps() {
		fmt.Fprintf(d.out, "\n== %s\n", s.title)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", strings.ToLower(s.title), err)
		}
		if ctx.Err() != nil {
			return nil // Ctrl-C: tear down quietly
		}
	}
	if !d.keep {
		fmt.Fprintln(d.out, "\nTearing down (run with --keep to look around first).")
		return nil
	}
	d.printHowToLook()
	fmt.Fprintln(d.out, "\nThe cluster stays up until Ctrl-C.")
	<-ctx.Done()
	fmt.Fprintln(d.out, "\nTearing down.")
	return nil
}

func (d *demo) buildLab(ctx context.Context) error {
	log := slog.New(slog.DiscardHandler)
	if d.verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	d.lab, err = netlab.New(ctx, netlab.Config{WeftBinary: exe, Logger: log})
	if err != nil {
		return err
	}
	for range d.size {
		n, err := d.lab.AddNode(0)
		if err != nil {
			return err
		}
		d.nodes = append(d.nodes, n)
	}
	fmt.Fprintf(d.out, "lab %s: underlay bridge 172.30.0.0/24, %d nodes, files in %s\n", d.lab.Prefix, len(d.nodes), d.lab.Dir)
	return nil
}

func (d *demo) startDaemons(ctx context.Context) error {
	names := make([]string, len(d.nodes))
	for i, n := range d.nodes {
		names[i] = n.Name
	}
	seed := d.nodes[0]
	for _, n := range d.nodes {
		err := n.StartDaemon(
			"--peers", seed.Addr.String(),
			"--ipalloc-init", "seed="+strings.Join(names, ","),
			"--metrics-addr", "",
			"--wg-mode", "userspace",
		)
		if err != nil {
			return err
		}
		fmt.Fprintf(d.out, "%s: weft daemon started, pid %d\n", n.Name, n.DaemonPID())
	}
	return nil
}

// waitDaemons waits until every daemon answers on its socket or has
// exited; a daemon that fails is shown, not fatal.
func (d *demo) waitDaemons(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.wait)
	defer cancel()
	for _, n := range d.nodes {
		if err := n.WaitSocket(ctx); err != nil && !n.DaemonRunning() {
			fmt.Fprintf(d.out, "%s: the daemon exited\n", n.Name)
		} else if err != nil {
			fmt.Fprintf(d.out, "%s: no API socket yet (%v)\n", n.Name, context.Cause(ctx))
		} else {
			fmt.Fprintf(d.out, "%s: ready\n", n.Name)
		}
	}
	return nil
}

func (d *demo) printNodes(context.Context) error {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tUNDERLAY\tNETNS\tPID\tDAEMON")
	for _, n := range d.nodes {
		state := "running"
		if !n.DaemonRunning() {
			state = "exited"
		} else if _, err := os.Stat(n.SocketPath()); err != nil {
			state = "running, no API socket"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", n.Name, n.Addr, filepath.Base(n.Netns), n.DaemonPID(), state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range d.nodes {
		if !n.DaemonRunning() {
			fmt.Fprintf(d.out, "\nlast lines of the log of %s (%s):\n%s\n", n.Name, n.LogFile(), indent(n.LogTail(10)))
		}
	}
	return nil
}

func (d *demo) printHowToLook() {
	n := d.nodes[0]
	fmt.Fprintf(d.out, `
== Look around
Each node is a network namespace; each daemon sees its own /run/wireguard.
  ip netns list | grep %[1]s
  ip netns exec %[2]s ip addr
  %[3]s status --run-dir %[4]s
  tail -f %[5]s
`, d.lab.Prefix, filepath.Base(n.Netns), d.lab.WeftBinary(), n.RunDir(), n.LogFile())
	for _, n := range d.nodes {
		if n.DaemonRunning() {
			fmt.Fprintf(d.out, "  nsenter -t %d -n -m wg show    # WireGuard of %s, as its daemon sees it\n", n.DaemonPID(), n.Name)
			break
		}
	}
}

// teardown stops the daemons gently (SIGTERM), all at once, then removes
// the lab.
func (d *demo) teardown() error {
	if d.lab == nil {
		return nil
	}
	var wg sync.WaitGroup
	for _, n := range d.nodes {
		wg.Go(func() { _ = n.StopDaemon() })
	}
	wg.Wait()
	return d.lab.Close()
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(s, "\n", "\n  ")
}
