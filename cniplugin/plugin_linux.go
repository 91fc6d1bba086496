package cniplugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/api"
)

// How long each command waits for the daemon. ADD may wait for the
// allocator; DEL must never hold up a pod's removal.
const (
	addTimeout    = 5 * time.Second
	delTimeout    = 2 * time.Second
	checkTimeout  = 3 * time.Second
	gcTimeout     = 10 * time.Second
	statusTimeout = 2 * time.Second
)

// plugin carries what every command needs; it holds no state between
// calls (each call is its own process).
type plugin struct {
	log *slog.Logger
}

// Main runs the plugin through the CNI skel: it reads CNI_COMMAND and the
// config, runs the command, prints the result or the error JSON, and exits
// non-zero on error.
func Main() {
	p := &plugin{log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("plugin", BinaryName)}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    p.add,
		Del:    p.del,
		Check:  p.check,
		GC:     p.gc,
		Status: p.status,
	}, SupportedVersions, about())
}

func attachmentOf(args *skel.CmdArgs) api.Attachment {
	pa := parseCNIArgs(args.Args)
	return api.Attachment{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		Netns:        args.Netns,
		PodNamespace: pa.Namespace,
		PodName:      pa.Name,
	}
}

// call sends one request to the daemon with its own deadline.
func call(socket string, timeout time.Duration, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return api.NewClient(socket, timeout).Do(ctx, method, path, in, out)
}

// openNetns opens the pod's netns, CNI_NETNS.
func openNetns(path string) (ns.NetNS, error) {
	netns, err := ns.GetNS(path)
	if err == nil {
		return netns, nil
	}
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	switch {
	case errors.As(err, &notExist):
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS %q does not exist", path),
			"the pod's network namespace is gone; the runtime must pass the netns of a running sandbox")
	case errors.As(err, &notNS):
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS %q is not a network namespace", path), err.Error())
	default:
		return nil, types.NewError(types.ErrIOFailure,
			fmt.Sprintf("cannot open CNI_NETNS %q: %v", path, err), "")
	}
}

// isCurrentNetns tells whether netns is the plugin's own (the node's).
func isCurrentNetns(netns ns.NetNS) (bool, error) {
	cur, err := ns.GetCurrentNS()
	if err != nil {
		return false, err
	}
	defer cur.Close()
	var a, b unix.Stat_t
	if err := unix.Fstat(int(netns.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Fstat(int(cur.Fd()), &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

func (p *plugin) add(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult != nil || conf.RawPrevResult != nil {
		return types.NewError(types.ErrUnsupportedField,
			"weft-cni must be the first plugin of the chain, but ADD got a prevResult from an earlier one",
			"put weft-cni first in the plugins of the network config list")
	}
	podNS, err := openNetns(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	if same, err := isCurrentNetns(podNS); err != nil || same {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS %q is the node's own network namespace (or cannot be compared with it: %v)", args.Netns, err),
			"the runtime must pass the pod sandbox's netns")
	}

	// The daemon allocates (and writes the allocation to disk) while the
	// veth pair is made, which needs no address.
	att := attachmentOf(args)
	allocated := make(chan allocation, 1)
	go func() {
		var a allocation
		a.err = call(conf.Socket, addTimeout, api.MethodPost, api.PathCNIAllocate, att, &a.Allocation)
		allocated <- a
	}()
	pn := podNet{PodNS: podNS, IfName: args.IfName, HostVeth: HostVethName(args.ContainerID, args.IfName), MTU: conf.MTU}
	h, err := openHandles(podNS)
	created := false
	if err == nil {
		defer h.Close()
		created, err = pn.setupVeth(h)
	}
	alloc := <-allocated
	if alloc.err != nil {
		if created {
			if err := teardownPod(pn.HostVeth); err != nil {
				p.log.Warn("undo failed ADD: remove veth", "link", pn.HostVeth, "err", err)
			}
		}
		return daemonError("allocate an address for the pod", conf.Socket, addTimeout, types.ErrTryAgainLater, alloc.err)
	}
	if err != nil {
		p.undo(conf, att)
		return setupError(err)
	}
	result, err := p.plumb(conf, h, pn, alloc.Allocation)
	if err != nil {
		p.undo(conf, att)
		return err
	}
	out, err := convertResult(result, conf.CNIVersion)
	if err != nil {
		p.undo(conf, att)
		return err
	}
	return out.Print()
}

// allocation is the daemon's answer to ADD's request for an address.
type allocation struct {
	api.Allocation
	err error
}

// plumb configures the veth pair setupVeth made for the allocation and
// returns the result.
func (p *plugin) plumb(conf *NetConf, h handles, pn podNet, alloc api.Allocation) (*current.Result, error) {
	if err := validAllocation(alloc); err != nil {
		return nil, types.NewError(types.ErrInternal, err.Error(), "this is a bug in the weft daemon; see its log")
	}
	pn.Address, pn.Gateway, pn.MTU = alloc.Address, alloc.Gateway, mtuOf(conf, alloc)
	pn.Address6, pn.Gateway6 = alloc.Address6, alloc.Gateway6
	host, pod, err := pn.configure(h)
	if err != nil {
		return nil, setupError(err)
	}
	return newResult(alloc, host, pod), nil
}

// setupError is the CNI error of a failed veth setup; ADD has undone it.
func setupError(err error) error {
	return types.NewError(types.ErrInternal,
		fmt.Sprintf("cannot set up the pod's network: %v", err),
		"the plugin removed what it had set up; the runtime will retry")
}

// undo removes what a failed ADD set up: the veth and the allocation. What
// fails here is left to DEL, which the runtime sends after a failed ADD,
// and to the daemon's own garbage collection.
func (p *plugin) undo(conf *NetConf, att api.Attachment) {
	name := HostVethName(att.ContainerID, att.IfName)
	if err := teardownPod(name); err != nil {
		p.log.Warn("undo failed ADD: remove veth", "link", name, "err", err)
	}
	if err := call(conf.Socket, delTimeout, api.MethodPost, api.PathCNIRelease, att, nil); err != nil {
		p.log.Warn("undo failed ADD: release address", "container", att.ContainerID, "err", err)
	}
}

func mtuOf(conf *NetConf, alloc api.Allocation) int {
	if conf.MTU != 0 {
		return conf.MTU
	}
	return alloc.MTU
}

// del removes the veth (and with it the pod's end and the host route),
// then releases the address. It succeeds when there is nothing left to
// remove, when the netns is gone, and when the daemon is down or does not
// know the attachment: the daemon frees addresses of pods that are gone on
// its own, and a DEL that fails would only block the pod's removal.
func (p *plugin) del(args *skel.CmdArgs) error {
	name := HostVethName(args.ContainerID, args.IfName)
	if err := teardownPod(name); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("cannot remove the pod's network: %v", err),
			"the runtime retries DEL; if this persists, delete the link by hand: ip link del "+name)
	}
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	err = call(conf.Socket, delTimeout, api.MethodPost, api.PathCNIRelease, attachmentOf(args), nil)
	var apiErr *api.Error
	switch {
	case err == nil, errors.As(err, &apiErr) && apiErr.Code == api.CodeUnknown:
	default:
		p.log.Warn("DEL: address not released now; the weft daemon frees it once it sees the pod gone",
			"container", args.ContainerID, "ifname", args.IfName, "err", err)
	}
	return nil
}

func (p *plugin) check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	podNS, err := openNetns(args.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close()
	var alloc api.Allocation
	if err := call(conf.Socket, checkTimeout, api.MethodPost, api.PathCNICheck, attachmentOf(args), &alloc); err != nil {
		return daemonError("check the pod's address", conf.Socket, checkTimeout, types.ErrTryAgainLater, err)
	}
	if err := validAllocation(alloc); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "this is a bug in the weft daemon; see its log")
	}
	var diffs []string
	if conf.PrevResult != nil {
		diffs = append(diffs, comparePrevResult(conf.PrevResult, alloc)...)
	}
	diffs = append(diffs, checkPod(podNet{
		PodNS:    podNS,
		IfName:   args.IfName,
		HostVeth: HostVethName(args.ContainerID, args.IfName),
		Address:  alloc.Address,
		Gateway:  alloc.Gateway,
		Address6: alloc.Address6,
		Gateway6: alloc.Gateway6,
		MTU:      mtuOf(conf, alloc),
	})...)
	if len(diffs) > 0 {
		return types.NewError(ErrCheckMismatch,
			"the pod's network differs from what weft configured: "+strings.Join(diffs, "; "),
			"delete the pod so that it is re-created, or run ADD again to repair it")
	}
	return nil
}

// comparePrevResult tells whether the runtime's cached result still names
// the address the daemon holds.
func comparePrevResult(prev types.Result, alloc api.Allocation) []string {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return []string{fmt.Sprintf("cannot read prevResult: %v", err)}
	}
	var held []netip.Prefix
	for _, p := range []netip.Prefix{alloc.Address, alloc.Address6} {
		if p.IsValid() {
			held = append(held, p)
		}
	}
	missing := false
	for _, want := range held {
		found := false
		for _, ipc := range res.IPs {
			if ipc.Address.String() == want.String() {
				found = true
			}
		}
		missing = missing || !found
	}
	if !missing {
		return nil
	}
	var have []string
	for _, ipc := range res.IPs {
		have = append(have, ipc.Address.String())
	}
	var want []string
	for _, p := range held {
		want = append(want, p.String())
	}
	return []string{fmt.Sprintf("prevResult has addresses [%s] but the daemon holds %s for this pod", strings.Join(have, " "), strings.Join(want, " "))}
}

// gc asks the daemon to release every allocation but the valid ones, then
// removes the host veths of every attachment that is not valid (those the
// daemon released and any other weft veth left behind). It goes on after an
// error and reports them all.
func (p *plugin) gc(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid, err := gcAttachments(args.StdinData)
	if err != nil {
		return err
	}
	req := api.GCRequest{Valid: make([]api.Attachment, 0, len(valid))}
	keep := make(map[string]bool, len(valid))
	for _, a := range valid {
		req.Valid = append(req.Valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
		keep[HostVethName(a.ContainerID, a.IfName)] = true
	}
	var resp api.GCResponse
	derr := call(conf.Socket, gcTimeout, api.MethodPost, api.PathCNIGC, req, &resp)

	var errs []error
	stale := map[string]bool{}
	for _, a := range resp.Released {
		if name := HostVethName(a.ContainerID, a.IfName); !keep[name] {
			stale[name] = true
		}
	}
	names, err := hostVeths()
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if !keep[name] {
			stale[name] = true
		}
	}
	for name := range stale {
		if err := teardownPod(name); err != nil {
			errs = append(errs, err)
		}
	}
	if derr != nil {
		return daemonError("release the addresses of pods that are gone", conf.Socket, gcTimeout, types.ErrTryAgainLater, derr)
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("GC could not remove every stale link: %v", err), "the runtime retries GC")
	}
	return nil
}

// status is ready only when the daemon says it can give pods addresses.
func (p *plugin) status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var ready api.Ready
	if err := call(conf.Socket, statusTimeout, api.MethodGet, api.PathReady, nil, &ready); err != nil {
		e := daemonError("ask the weft daemon whether it is ready", conf.Socket, statusTimeout, types.ErrPluginNotAvailable, err)
		e.Code = types.ErrPluginNotAvailable
		return e
	}
	if !ready.Ready {
		reason := ready.Reason
		if reason == "" {
			reason = "no reason given"
		}
		return types.NewError(types.ErrPluginNotAvailable,
			"the weft daemon is not ready for pods: "+reason,
			"pods start once the node has joined the mesh and holds address space; see `weft status`")
	}
	return nil
}
