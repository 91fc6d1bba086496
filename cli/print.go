package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/ipalloc"
)

// printJSON prints the daemon's answer indented, as `--json` shows it.
func printJSON(w io.Writer, raw json.RawMessage) error {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printStatus renders a status answer for people.
func printStatus(w io.Writer, section string, raw json.RawMessage) error {
	switch section {
	case "peers":
		var st daemon.PeersStatus
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		return printPeers(w, st)
	case "ipam":
		var st ipalloc.Status
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		return printIPAM(w, st)
	case "":
		var all struct {
			Peers daemon.PeersStatus `json:"peers"`
			IPAM  ipalloc.Status     `json:"ipam"`
		}
		if err := json.Unmarshal(raw, &all); err != nil {
			return err
		}
		if err := printPeers(w, all.Peers); err != nil {
			return err
		}
		fmt.Fprintln(w)
		return printIPAM(w, all.IPAM)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// printRotation shows the key rotation and cluster secret state, when
// there is something to show.
func printRotation(w io.Writer, st daemon.PeersStatus) {
	kr := st.KeyRotation
	switch {
	case kr.State == "pending":
		waiting := "switching now"
		if len(kr.Waiting) > 0 {
			waiting = "waiting for " + strings.Join(kr.Waiting, ", ")
		}
		fmt.Fprintf(w, "key rotation: pending since %s, next key %s…, %s\n", kr.Since, short(kr.NextPublicKey), waiting)
	case kr.Rotations > 0:
		fmt.Fprintf(w, "key rotation: idle, %d done, the last at %s\n", kr.Rotations, kr.LastSwitch)
	}
	if sec := st.Secrets; sec != nil && len(sec.Held) > 1 {
		fmt.Fprintf(w, "cluster secret rotation: holding %s (newest first), gossip with %s, overlap ends %s\n",
			strings.Join(sec.Held, ", "), sec.Gossip, sec.OverlapEnds)
	}
	for _, p := range st.Peers {
		if p.NextPublicKey != "" {
			fmt.Fprintf(w, "peer %s rotates its key to %s\n", orDash(p.Name), p.NextPublicKey)
		}
	}
}

func printPeers(w io.Writer, st daemon.PeersStatus) error {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + st.Reason
	}
	fmt.Fprintf(w, "node %s  %s  tunnel %s (%s, %s, mtu %d)  endpoint %s  key %s…\n",
		st.Node, ready, withAddr6(orDash(st.TunnelAddr), st.TunnelAddr6), st.Interface, st.WGMode, st.MTU, st.Endpoint, short(st.PublicKey))
	fmt.Fprintf(w, "mesh: %d other members, health score %d (0 is best)\n", st.Members, st.Health)
	nat := st.NATKind
	if nat == "" {
		nat = "unknown yet"
	}
	if st.Reflexive != "" {
		nat += ", public endpoint " + st.Reflexive
	}
	fmt.Fprintf(w, "NAT: %s  direct: %d of %d live peers (%.0f%%)\n", nat, st.DirectPeers, st.LivePeers, 100*st.DirectShare)
	printRotation(w, st)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tPATH\tSINCE\tRTT\tLOSS\tNAT\tENDPOINT\tTUNNEL\tPMTU\tHANDSHAKE\tRX\tTX\tALLOWED IPS")
	for _, p := range st.Peers {
		path := p.Path
		if p.Via != "" {
			path += " via " + p.Via
		}
		since := "-"
		if t, err := time.Parse(time.RFC3339Nano, p.PathSince); err == nil {
			since = time.Since(t).Round(time.Second).String()
		}
		rtt, loss := "-", "-"
		if p.RTT > 0 {
			rtt = time.Duration(p.RTT * float64(time.Second)).Round(10 * time.Microsecond).String()
		}
		if p.DirectPath != "" {
			loss = fmt.Sprintf("%.0f%%", 100*p.ProbeLoss)
		}
		hs := "never"
		if p.LastHandshake != "" {
			hs = (time.Duration(p.HandshakeAge) * time.Second).String() + " ago"
		}
		pmtu := "-"
		if p.PMTU > 0 {
			pmtu = strconv.Itoa(p.PMTU)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", orDash(p.Name), p.State, path, since, rtt, loss,
			orDash(p.NATKind), orDash(p.Endpoint),
			withAddr6(orDash(p.TunnelAddr), p.TunnelAddr6), pmtu, hs, bytesHuman(p.RxBytes), bytesHuman(p.TxBytes), strings.Join(p.AllowedIPs, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, p := range st.Peers {
		if p.Refused != "" {
			fmt.Fprintf(w, "REFUSED from %s: it %s\n", orDash(p.Name), p.Refused)
		}
	}
	return nil
}

func printIPAM(w io.Writer, st ipalloc.Status) error {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY: " + st.Reason
	}
	pr := st.Range.String()
	if st.Range6.IsValid() {
		pr += " with " + st.Range6.String()
	}
	fmt.Fprintf(w, "pod range %s (%d addresses)  %s  allocations here: %d\n", pr, st.Size, ready, st.Allocations)
	if st.RefusedGenesis != "" {
		fmt.Fprintf(w, "REFUSED a ring with another genesis: %s\n", st.RefusedGenesis)
	}
	if st.Asking {
		fmt.Fprintln(w, "asking peers for a share of their addresses")
	}
	if st.LastDonationError != "" {
		fmt.Fprintf(w, "last request for addresses: %s\n", st.LastDonationError)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREACHABLE\tSIZE\tUSED\tFREE\tRANGES")
	for _, n := range st.Nodes {
		rs := make([]string, 0, len(n.Ranges)+len(n.Ranges6))
		for _, r := range append(n.Ranges, n.Ranges6...) {
			rs = append(rs, r.String())
		}
		fmt.Fprintf(tw, "%s\t%v\t%d\t%d\t%d\t%s\n", n.Name, n.Reachable, n.Size, n.Used, n.Free, strings.Join(rs, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if st.UnreachableAddresses > 0 {
		fmt.Fprintf(w, "%d addresses (%.1f%% of the range) belong to unreachable nodes; `weft rmpeer NODE` reclaims a node that is gone for good\n",
			st.UnreachableAddresses, 100*st.UnreachableShare)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func short(key string) string {
	if len(key) > 10 {
		return key[:10]
	}
	return key
}

func bytesHuman(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fK", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}

// withAddr6 appends a dual-stack node's IPv6 tunnel address, if any.
func withAddr6(addr, addr6 string) string {
	if addr6 == "" {
		return addr
	}
	return addr + "," + addr6
}
