package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/api"
	"github.com/weftnet/weft/daemon"
	"github.com/weftnet/weft/policy"
)

func newWhyCmd() *cobra.Command {
	var runDir string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "why SRC DST [PORT/PROTO]",
		Short: "Say whether a packet would pass the NetworkPolicies in force, and why",
		Long: `Say whether a packet from SRC to DST would pass the NetworkPolicies in force:
which policies isolate each end, the rule that allows it, or for a denial the
rule that came nearest to matching and what it lacked. A denial's reason is
the one the drop log gives (weft status policy) for the same packet.

SRC and DST are each a pod (namespace/name) or an address: a pod's, a node's,
or one outside the cluster (for ipBlock rules).

PORT/PROTO is the destination port and protocol: 80/tcp, 53/udp, 9/sctp, or
just 80 for TCP (the protocol NetworkPolicy defaults to). Without it the
packet is ICMP, as ping sends: only rules that list no ports allow it. A
protocol without ports may be named alone: icmp, icmpv6, or a number.

Egress is judged with the rules of the source pod's node, ingress with those
of the destination pod's node; the daemon on this node computes both from the
Pods, Namespaces and NetworkPolicies it watches, which are the whole
cluster's.`,
		Example: `  weft why x/client x/web 80/tcp
  weft why x/client 192.168.4.20 5432
  weft why 192.168.1.7 x/web 443 --json`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.WhyRequest{Src: args[0], Dst: args[1]}
			if len(args) == 3 {
				proto, port, err := policy.ParsePortProto(args[2])
				if err != nil {
					return err
				}
				req.Proto, req.Port = proto.String(), port
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			var raw json.RawMessage
			if err := client(runDir).Do(ctx, http.MethodPost, api.PathPolicyWhy, req, &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), raw)
			}
			var ans daemon.WhyAnswer
			if err := json.Unmarshal(raw, &ans); err != nil {
				return fmt.Errorf("decode answer of the weft daemon: %w", err)
			}
			if err := printWhy(cmd.OutOrStdout(), ans); err != nil {
				return err
			}
			if len(args) == 2 {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), "(no PORT/PROTO given: judged as ICMP, which ping sends; rules that list ports never allow it)")
				return err
			}
			return nil
		},
	}
	addRunDir(cmd, &runDir)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (stable, documented in the README)")
	return cmd
}

// printWhy renders a verdict for people.
func printWhy(w io.Writer, a daemon.WhyAnswer) error {
	var b strings.Builder
	what := strings.ToUpper(a.Proto.String())
	if a.Proto.HasPorts() {
		what = fmt.Sprintf("%d/%s", a.Port, what)
	}
	fmt.Fprintf(&b, "%s -> %s, %s: %s\n\n", whyEndpoint(a.Src), whyEndpoint(a.Dst), what, passes(a.Allowed))
	for _, d := range []struct {
		dir policy.Direction
		v   policy.DirVerdict
		end policy.Endpoint
	}{{policy.Egress, a.Egress, a.Src}, {policy.Ingress, a.Ingress, a.Dst}} {
		whyDirection(&b, d.dir, d.v, d.end)
	}
	fmt.Fprintf(&b, "\nreason: %s\n", a.Reason)
	fmt.Fprintf(&b, "(answered by %s from the Pods, Namespaces and NetworkPolicies it watches)\n", a.AnsweredBy)
	_, err := io.WriteString(w, b.String())
	return err
}

func passes(ok bool) string {
	if ok {
		return "allowed"
	}
	return "DENIED"
}

func whyEndpoint(e policy.Endpoint) string {
	if e.Pod == "" {
		return e.IP.String()
	}
	return fmt.Sprintf("%s (%s on %s)", e.Pod, e.IP, e.Node)
}

func whyDirection(b *strings.Builder, dir policy.Direction, v policy.DirVerdict, end policy.Endpoint) {
	if v.Node != "" {
		fmt.Fprintf(b, "%s, judged by %s: %s\n", dir, v.Node, passes(v.Allowed))
	} else {
		fmt.Fprintf(b, "%s: %s\n", dir, passes(v.Allowed))
	}
	if len(v.Policies) > 0 {
		fmt.Fprintf(b, "  isolated by: %s\n", strings.Join(v.Policies, ", "))
	}
	refs := func(rs []policy.RuleRef) string {
		var out []string
		for _, r := range rs {
			out = append(out, fmt.Sprintf("%s %s[%d]", r.Policy, dir, r.Rule))
		}
		return strings.Join(out, ", ")
	}
	if c := v.Cluster; c != nil && v.Decision != policy.AcceptedByCluster && v.Decision != policy.DeniedByCluster {
		fmt.Fprintf(b, "  passed on by %s ClusterNetworkPolicy %s %s[%d]\n", c.Tier, c.Policy, dir, c.Index)
	}
	switch v.Decision {
	case policy.AcceptedByCluster, policy.DeniedByCluster:
		fmt.Fprintf(b, "  %s\n", v.Reason)
	case policy.NotAPod, policy.NotLocal:
		fmt.Fprintf(b, "  %s is no pod's address; no policy judges it\n", end.IP)
	case policy.NotIsolated:
		fmt.Fprintf(b, "  no policy selects %s for %s\n", v.Pod, dir)
	case policy.Loopback:
		fmt.Fprintf(b, "  %s talks to itself\n", v.Pod)
	case policy.AllowedFromNode:
		fmt.Fprintf(b, "  from the node of %s itself (kubelet probes)\n", v.Pod)
	case policy.AllowedByPolicy:
		fmt.Fprintf(b, "  allowed by: %s\n", refs(v.AllowedBy))
	case policy.DefaultDeny:
		if v.Nearest == nil {
			fmt.Fprintf(b, "  no rule matched: %s\n", lastClause(v.Reason))
			return
		}
		fmt.Fprintf(b, "  no rule matched; nearest: %s, which lacks\n", refs([]policy.RuleRef{v.Nearest.RuleRef}))
		for _, l := range v.Nearest.Lacks {
			fmt.Fprintf(b, "    - %s\n", l)
		}
	}
}

// lastClause is the part of a reason after its last "; ".
func lastClause(s string) string {
	if i := strings.LastIndex(s, "; "); i >= 0 {
		return s[i+2:]
	}
	return s
}
