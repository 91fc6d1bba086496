package policy

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Applier keeps the policy part of weft's nftables table equal to the last
// applied RuleSet. Its methods may be called from several goroutines; they
// are serialized.
type Applier struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex // guards the fields below and the kernel writes
	desired *nftState
	writes  uint64
}

// elemsPerMessage bounds the elements of one netlink message of a batch.
const elemsPerMessage = 4096

// NewApplier returns an applier; it touches the kernel only when called.
func NewApplier(cfg Config) *Applier {
	cfg = cfg.withDefaults()
	return &Applier{cfg: cfg, log: cfg.Logger}
}

func (a *Applier) conn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// A big rule set is one big batch: let the kernel take it at once.
		return c.SetWriteBuffer(64 << 20)
	})}
	if a.cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(a.cfg.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

func (a *Applier) table() *nftables.Table {
	return &nftables.Table{Name: a.cfg.Table, Family: nftables.TableFamilyINet}
}

// Apply makes the kernel hold exactly rs. When it already does, nothing is
// written (so Apply is cheap to repeat); otherwise all policy chains, sets
// and maps are rewritten in one atomic batch, so packets see either the old
// rules or the new ones, never a mix.
func (a *Applier) Apply(rs RuleSet) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.desired = render(rs, a.cfg)
	return a.sync()
}

// Sync compares the kernel with the last applied RuleSet and repairs any
// drift (a deleted chain, a changed set). Before the first Apply it does
// nothing.
func (a *Applier) Sync() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.desired == nil {
		return nil
	}
	return a.sync()
}

// Writes counts the batches written so far (for tests and metrics).
func (a *Applier) Writes() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.writes
}

func (a *Applier) sync() error {
	c, err := a.conn()
	if err != nil {
		return err
	}
	have, err := a.read(c)
	if err != nil {
		return err
	}
	diff := have.diff(a.desired)
	if diff == "" {
		return nil
	}
	a.log.Info("writing network policy rules", "reason", diff,
		"chains", len(a.desired.chains), "counters", len(a.desired.counters))
	if err := a.write(c, have, a.desired); err != nil {
		return fmt.Errorf("write nftables policy rules (%s): %w", diff, err)
	}
	a.writes++
	return nil
}

// kernelState is what the kernel holds of ours, in comparable form.
type kernelState struct {
	tableExists bool
	chains      map[string]*nftables.Chain
	rules       map[string][]string // chain -> rule comments
	sets        map[string]*nftables.Set
	elems       map[string][]string // set -> canonical elements, sorted
	counters    map[string]bool
}

func (a *Applier) read(c *nftables.Conn) (*kernelState, error) {
	ks := &kernelState{chains: map[string]*nftables.Chain{}, rules: map[string][]string{},
		sets: map[string]*nftables.Set{}, elems: map[string][]string{}, counters: map[string]bool{}}
	t := a.table()
	if _, err := c.ListTableOfFamily(t.Name, t.Family); err != nil {
		if errors.Is(err, unix.ENOENT) || strings.Contains(err.Error(), "no such file") {
			return ks, nil
		}
		return nil, fmt.Errorf("list nftables table %s: %w", t.Name, err)
	}
	ks.tableExists = true
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != t.Name || !strings.HasPrefix(ch.Name, ownPrefix) {
			continue
		}
		ks.chains[ch.Name] = ch
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		texts := []string{}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			texts = append(texts, s)
		}
		ks.rules[ch.Name] = texts
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return nil, fmt.Errorf("list nftables sets: %w", err)
	}
	for _, s := range sets {
		if !strings.HasPrefix(s.Name, ownPrefix) {
			continue
		}
		ks.sets[s.Name] = s
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
		}
		ks.elems[s.Name] = canonicalElems(elems, true)
	}
	objs, err := c.GetObjects(t)
	if err != nil {
		return nil, fmt.Errorf("list nftables objects: %w", err)
	}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok && strings.HasPrefix(co.Name, ownPrefix) {
			ks.counters[co.Name] = true
		}
	}
	return ks, nil
}

// canonicalElems renders set elements comparably: key, key end and, for
// verdict maps, the target chain. fromKernel says the verdicts are still
// netlink attributes.
func canonicalElems(elems []nftables.SetElement, fromKernel bool) []string {
	out := make([]string, 0, len(elems))
	for _, e := range elems {
		if e.IntervalEnd {
			continue
		}
		s := fmt.Sprintf("%x/%x", e.Key, e.KeyEnd)
		switch {
		case e.VerdictData != nil:
			s += "->" + e.VerdictData.Chain
		case fromKernel && len(e.Val) > 0:
			s += "->" + verdictChain(e.Val)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// verdictChain decodes the chain of a jump verdict (NFTA_VERDICT_CHAIN).
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return ad.String()
		}
	}
	return "?"
}

// diff says what differs between the kernel and the desired state; "" when
// nothing does.
func (ks *kernelState) diff(want *nftState) string {
	if !ks.tableExists {
		return "no table"
	}
	var d []string
	wantChains := map[string]bool{}
	for _, c := range want.chains {
		wantChains[c.name] = true
		have, ok := ks.chains[c.name]
		if !ok {
			d = append(d, "chain "+c.name+" missing")
			continue
		}
		if c.hook != nil && (have.Hooknum == nil || *have.Hooknum != *c.hook || have.Priority == nil ||
			*have.Priority != 0 || have.Policy == nil || *have.Policy != nftables.ChainPolicyAccept) {
			d = append(d, "chain "+c.name+" hook changed")
		}
		var texts []string
		for _, r := range c.rules {
			s, _ := userdata.GetString(comment(r.text), userdata.TypeComment)
			texts = append(texts, s)
		}
		if !slices.Equal(texts, ks.rules[c.name]) {
			d = append(d, "rules of "+c.name+" changed")
		}
	}
	for name := range ks.chains {
		if !wantChains[name] {
			d = append(d, "chain "+name+" stale")
		}
	}
	wantSets := map[string]bool{}
	for _, s := range want.sets {
		wantSets[s.set.Name] = true
		if _, ok := ks.sets[s.set.Name]; !ok {
			d = append(d, "set "+s.set.Name+" missing")
			continue
		}
		if !slices.Equal(canonicalElems(s.elems, false), ks.elems[s.set.Name]) {
			d = append(d, "elements of "+s.set.Name+" changed")
		}
	}
	for name := range ks.sets {
		if !wantSets[name] {
			d = append(d, "set "+name+" stale")
		}
	}
	for _, name := range want.counters {
		if !ks.counters[name] {
			d = append(d, "counter "+name+" missing")
		}
	}
	for name := range ks.counters {
		if !slices.Contains(want.counters, name) {
			d = append(d, "counter "+name+" stale")
		}
	}
	slices.Sort(d)
	if len(d) > 4 {
		d = append(d[:4], fmt.Sprintf("and %d more", len(d)-4))
	}
	return strings.Join(d, ", ")
}

// write replaces everything of ours with want, in one batch: flush what
// exists, delete what is stale, create what is missing, fill.
func (a *Applier) write(c *nftables.Conn, have *kernelState, want *nftState) error {
	t := a.table()
	c.AddTable(t)
	// Detach: empty every chain and set of ours, dropping all references.
	for _, ch := range have.chains {
		c.FlushChain(&nftables.Chain{Name: ch.Name, Table: t})
	}
	for _, s := range have.sets {
		c.FlushSet(&nftables.Set{Name: s.Name, Table: t})
	}
	wantChains := map[string]bool{}
	for _, ch := range want.chains {
		wantChains[ch.name] = true
	}
	for name := range have.chains {
		if !wantChains[name] {
			c.DelChain(&nftables.Chain{Name: name, Table: t})
		}
	}
	wantSets := map[string]*nftSet{}
	for _, s := range want.sets {
		wantSets[s.set.Name] = s
	}
	for name := range have.sets {
		if wantSets[name] == nil {
			c.DelSet(&nftables.Set{Name: name, Table: t})
		}
	}
	for name := range have.counters {
		if !slices.Contains(want.counters, name) {
			c.DeleteObject(&nftables.CounterObj{Table: t, Name: name})
		}
	}

	// Create and fill. Counters that exist keep their values.
	ids := map[string]uint32{}
	sets := make([]*nftables.Set, len(want.sets))
	for i, s := range want.sets {
		set := s.set
		set.Table = t
		if err := c.AddSet(&set, nil); err != nil {
			return fmt.Errorf("add set %s: %w", set.Name, err)
		}
		ids[set.Name] = set.ID
		sets[i] = &set
	}
	for _, name := range want.counters {
		if !have.counters[name] {
			c.AddObj(&nftables.CounterObj{Table: t, Name: name})
		}
	}
	accept := nftables.ChainPolicyAccept
	chains := map[string]*nftables.Chain{}
	// Regular chains first (jump targets), then the base chains.
	for _, base := range []bool{false, true} {
		for _, ch := range want.chains {
			if (ch.hook != nil) != base {
				continue
			}
			nc := &nftables.Chain{Name: ch.name, Table: t}
			if ch.hook != nil {
				nc.Type = nftables.ChainTypeFilter
				nc.Hooknum = ch.hook
				nc.Priority = nftables.ChainPriorityFilter
				nc.Policy = &accept
			}
			chains[ch.name] = c.AddChain(nc)
		}
	}
	// Elements after the chains: verdict maps jump to the drop chains.
	for i, s := range want.sets {
		for chunk := range slices.Chunk(s.elems, elemsPerMessage) {
			if err := c.SetAddElements(sets[i], chunk); err != nil {
				return fmt.Errorf("add elements to set %s: %w", s.set.Name, err)
			}
		}
	}
	for _, base := range []bool{false, true} {
		for _, ch := range want.chains {
			if (ch.hook != nil) != base {
				continue
			}
			for _, r := range ch.rules {
				c.AddRule(&nftables.Rule{Table: t, Chain: chains[ch.name], Exprs: withSetIDs(r.exprs, ids), UserData: comment(r.text)})
			}
		}
	}
	return c.Flush()
}

// withSetIDs fills the set IDs of lookups, for sets created in the same
// batch.
func withSetIDs(exprs []expr.Any, ids map[string]uint32) []expr.Any {
	out := slices.Clone(exprs)
	for i, e := range out {
		if l, ok := e.(*expr.Lookup); ok {
			cp := *l
			cp.SetID = ids[l.SetName]
			out[i] = &cp
		}
	}
	return out
}

// Remove deletes the policy chains, sets, maps and counters (weft reset or
// policy disabled); the rest of weft's table stays.
func (a *Applier) Remove() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.desired = nil
	c, err := a.conn()
	if err != nil {
		return err
	}
	have, err := a.read(c)
	if err != nil {
		return err
	}
	if len(have.chains) == 0 && len(have.sets) == 0 && len(have.counters) == 0 {
		return nil
	}
	t := a.table()
	for _, ch := range have.chains {
		c.FlushChain(&nftables.Chain{Name: ch.Name, Table: t})
	}
	for _, s := range have.sets {
		c.FlushSet(&nftables.Set{Name: s.Name, Table: t})
	}
	// Base chains first: they jump to the others.
	for _, base := range []bool{true, false} {
		for _, ch := range have.chains {
			if (ch.Hooknum != nil) == base {
				c.DelChain(&nftables.Chain{Name: ch.Name, Table: t})
			}
		}
	}
	for _, s := range have.sets {
		c.DelSet(&nftables.Set{Name: s.Name, Table: t})
	}
	for name := range have.counters {
		c.DeleteObject(&nftables.CounterObj{Table: t, Name: name})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove nftables policy rules: %w", err)
	}
	a.writes++
	return nil
}

// Drops reads the drop counters of the pods of the last applied RuleSet.
func (a *Applier) Drops() ([]DropCount, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.desired == nil {
		return nil, nil
	}
	c, err := a.conn()
	if err != nil {
		return nil, err
	}
	objs, err := c.GetObjects(a.table())
	if err != nil {
		return nil, fmt.Errorf("read nftables drop counters: %w", err)
	}
	var out []DropCount
	for _, o := range objs {
		co, ok := o.(*nftables.CounterObj)
		if !ok {
			continue
		}
		if d, ok := a.desired.drops[co.Name]; ok {
			out = append(out, DropCount{Namespace: d.namespace, Name: d.name, Direction: d.dir,
				Dir: d.dir.String(), Packets: co.Packets, Bytes: co.Bytes})
		}
	}
	slices.SortFunc(out, func(x, y DropCount) int {
		return strings.Compare(x.Namespace+"/"+x.Name+"/"+x.Dir, y.Namespace+"/"+y.Name+"/"+y.Dir)
	})
	return out, nil
}
