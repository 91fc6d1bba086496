package policy

import (
	"cmp"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
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
	// written is what the kernel held after our last write or read; nil:
	// unknown. Apply diffs against it without reading the kernel; Sync
	// reads the kernel.
	written *kernelState
	lastRS  *RuleSet // the rule set of desired
	writes  uint64
}

// elemsPerMessage bounds the elements of one netlink message of a batch:
// the element list is one attribute, whose length has 16 bits, and an IPv6
// allow element takes about 100 bytes.
const elemsPerMessage = 512

// flushAbove is how many element changes of one set make the applier
// replace the set (delete it and add it whole, in the same atomic batch)
// instead of deleting and adding elements one by one.
var flushAbove = 2000

// NewApplier returns an applier; it touches the kernel only when called.
func NewApplier(cfg Config) *Applier {
	cfg = cfg.withDefaults()
	return &Applier{cfg: cfg, log: cfg.Logger}
}

func (a *Applier) conn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		// A big rule set is one big batch: let the kernel take it at once,
		// and keep room for one acknowledgement per message.
		if err := c.SetWriteBuffer(64 << 20); err != nil {
			return err
		}
		return c.SetReadBuffer(16 << 20)
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

// Apply makes the kernel hold exactly rs, in one atomic batch, so packets
// see either the old rules or the new ones, never a mix. It diffs against
// what it wrote last (reading the kernel only when it does not know or when
// the write fails), so repeating it with an unchanged rule set costs no
// system call; only what changed in the sets is written, while the chains
// are rewritten. Call Sync periodically to repair drift.
func (a *Applier) Apply(rs RuleSet) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.written != nil && a.lastRS != nil && reflect.DeepEqual(*a.lastRS, rs) {
		return nil
	}
	a.lastRS = &rs
	a.desired = render(rs, a.cfg)
	if a.written == nil {
		return a.sync()
	}
	diff := a.written.diff(a.desired)
	if diff == "" {
		return nil
	}
	c, err := a.conn()
	if err != nil {
		return err
	}
	if err := a.writeLogged(c, a.written, diff); err != nil {
		// The kernel is not what we wrote: read it and try again.
		a.log.Warn("network policy rules changed behind weft's back; resyncing", "err", err)
		a.written = nil
		return a.sync()
	}
	return nil
}

// Sync reads the kernel, compares it with the last applied RuleSet and
// repairs any drift (a deleted chain, a changed set). Before the first Apply
// it does nothing.
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
		a.written = have
		return nil
	}
	if err := a.writeLogged(c, have, diff); err != nil {
		a.written = nil
		return err
	}
	return nil
}

func (a *Applier) writeLogged(c *nftables.Conn, have *kernelState, diff string) error {
	a.log.Info("writing network policy rules", "reason", diff,
		"chains", len(a.desired.chains), "counters", len(a.desired.counters))
	if err := a.write(c, have, a.desired); err != nil {
		return fmt.Errorf("write nftables policy rules (%s): %w", diff, err)
	}
	a.writes++
	a.written = a.desired.asKernel()
	return nil
}

// kernelState is what the kernel holds of ours, in comparable form.
type kernelState struct {
	tableExists bool
	chains      map[string]*nftables.Chain
	rules       map[string][]string // chain -> rule comments
	sets        map[string]*nftables.Set
	elems       map[string]map[string]nftables.SetElement // set -> canonical element -> element
	counters    map[string]bool
}

func (a *Applier) read(c *nftables.Conn) (*kernelState, error) {
	ks := &kernelState{chains: map[string]*nftables.Chain{}, rules: map[string][]string{},
		sets: map[string]*nftables.Set{}, elems: map[string]map[string]nftables.SetElement{}, counters: map[string]bool{}}
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

// asKernel is the kernel state after st was written.
func (st *nftState) asKernel() *kernelState {
	ks := &kernelState{tableExists: true, chains: map[string]*nftables.Chain{}, rules: map[string][]string{},
		sets: map[string]*nftables.Set{}, elems: map[string]map[string]nftables.SetElement{}, counters: map[string]bool{}}
	accept := nftables.ChainPolicyAccept
	for _, c := range st.chains {
		ch := &nftables.Chain{Name: c.name}
		if c.hook != nil {
			ch.Hooknum, ch.Priority, ch.Policy = c.hook, nftables.ChainPriorityFilter, &accept
		}
		ks.chains[c.name] = ch
		ks.rules[c.name] = c.comments()
	}
	for _, s := range st.sets {
		ks.sets[s.set.Name] = &s.set
		ks.elems[s.set.Name] = s.canonical()
	}
	for _, name := range st.counters {
		ks.counters[name] = true
	}
	return ks
}

// comments returns the comments of the chain's rules, as the kernel holds
// them.
func (c *nftChain) comments() []string {
	out := make([]string, len(c.rules))
	for i, r := range c.rules {
		out[i], _ = userdata.GetString(comment(r.text), userdata.TypeComment)
	}
	return out
}

// canonical indexes the set's elements, computed once.
func (s *nftSet) canonical() map[string]nftables.SetElement {
	if s.byKey == nil {
		s.byKey = canonicalElems(s.elems, false)
	}
	return s.byKey
}

// canonicalElems indexes set elements by a comparable form: key, key end
// and, for verdict maps, the target chain. fromKernel says the verdicts are
// still netlink attributes.
func canonicalElems(elems []nftables.SetElement, fromKernel bool) map[string]nftables.SetElement {
	out := make(map[string]nftables.SetElement, len(elems))
	for _, e := range elems {
		if !e.IntervalEnd {
			out[elemKey(e, fromKernel)] = e
		}
	}
	return out
}

func elemKey(e nftables.SetElement, fromKernel bool) string {
	var b strings.Builder
	b.Grow(2*len(e.Key) + 2*len(e.KeyEnd) + 24)
	b.WriteString(hex.EncodeToString(e.Key))
	b.WriteByte('/')
	b.WriteString(hex.EncodeToString(e.KeyEnd))
	switch {
	case e.VerdictData != nil && e.VerdictData.Kind != expr.VerdictJump:
		fmt.Fprintf(&b, "->code:%d", e.VerdictData.Kind)
	case e.VerdictData != nil:
		b.WriteString("->" + e.VerdictData.Chain)
	case fromKernel && len(e.Val) > 0:
		b.WriteString("->" + verdictChain(e.Val))
	}
	return b.String()
}

// verdictChain decodes a verdict: the chain of a jump (NFTA_VERDICT_CHAIN),
// else code:N of its NFTA_VERDICT_CODE, as elemKey writes them.
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "?"
	}
	ad.ByteOrder = binary.BigEndian
	code, chain := "?", ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		case unix.NFTA_VERDICT_CODE:
			code = fmt.Sprintf("code:%d", int32(ad.Uint32()))
		}
	}
	if chain != "" {
		return chain
	}
	return code
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
		if !slices.Equal(c.comments(), ks.rules[c.name]) {
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
		if !sameKeys(s.canonical(), ks.elems[s.set.Name]) {
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

// write replaces everything of ours with want, in one batch.
func (a *Applier) write(c *nftables.Conn, have *kernelState, want *nftState) error {
	if err := buildBatch(c, a.table(), have, want); err != nil {
		return err
	}
	return c.Flush()
}

// buildBatch queues the messages that turn have into want. Set elements
// are updated incrementally (deleting and re-adding tens of thousands of
// interval elements in one transaction is slow in the kernel); chains are
// flushed and refilled. Order matters: elements that jump to stale chains go
// before those chains, new chains come before the elements that jump to
// them.
func buildBatch(c *nftables.Conn, t *nftables.Table, have *kernelState, want *nftState) error {
	c.AddTable(t)
	// Rules go first: sets they use may be replaced below.
	for _, ch := range have.chains {
		c.FlushChain(&nftables.Chain{Name: ch.Name, Table: t})
	}
	ids := map[string]uint32{}
	sets := make([]*nftables.Set, len(want.sets))
	adds := make([][]nftables.SetElement, len(want.sets))
	for i, s := range want.sets {
		set := s.set
		set.Table = t
		sets[i] = &set
		wantElems := s.canonical()
		haveElems, exists := have.elems[s.set.Name]
		if !exists {
			if _, ok := have.sets[s.set.Name]; ok {
				haveElems, exists = map[string]nftables.SetElement{}, true
			}
		}
		if !exists {
			if err := c.AddSet(&set, nil); err != nil {
				return fmt.Errorf("add set %s: %w", set.Name, err)
			}
			ids[set.Name] = set.ID
			adds[i] = s.elems
			continue
		}
		var dels []nftables.SetElement
		for _, k := range slices.Sorted(maps.Keys(haveElems)) {
			if _, ok := wantElems[k]; !ok {
				e := haveElems[k]
				dels = append(dels, nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd})
			}
		}
		for _, e := range s.elems {
			if _, ok := haveElems[elemKey(e, false)]; !ok {
				adds[i] = append(adds[i], e)
			}
		}
		if len(dels) > 0 && len(dels)+len(adds[i]) > flushAbove {
			// The kernel's concatenated-range sets (pipapo) pay for each
			// element changed in proportion to the set's size; past a few
			// thousand changes, replacing the set in the same batch (its
			// rules are flushed first) is far cheaper.
			c.DelSet(&set)
			if err := c.AddSet(&set, nil); err != nil {
				return fmt.Errorf("replace set %s: %w", set.Name, err)
			}
			ids[set.Name] = set.ID
			adds[i] = s.elems
			continue
		}
		for chunk := range slices.Chunk(dels, elemsPerMessage) {
			if err := c.SetDeleteElements(&set, chunk); err != nil {
				return fmt.Errorf("delete elements of set %s: %w", set.Name, err)
			}
		}
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
	wantSets := map[string]bool{}
	for _, s := range want.sets {
		wantSets[s.set.Name] = true
	}
	for name := range have.sets {
		if !wantSets[name] {
			c.DelSet(&nftables.Set{Name: name, Table: t})
		}
	}
	for name := range have.counters {
		if !slices.Contains(want.counters, name) {
			c.DeleteObject(&nftables.CounterObj{Table: t, Name: name})
		}
	}
	// Counters that exist keep their values.
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
	for i, s := range want.sets {
		for chunk := range slices.Chunk(adds[i], elemsPerMessage) {
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
	return nil
}

func sameKeys(a, b map[string]nftables.SetElement) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
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
	a.desired, a.written, a.lastRS = nil, nil, nil
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
	// Sets go before the chains their verdict maps jump to; base chains go
	// before the chains they jump to.
	for _, s := range have.sets {
		c.DelSet(&nftables.Set{Name: s.Name, Table: t})
	}
	for _, base := range []bool{true, false} {
		for _, ch := range have.chains {
			if (ch.Hooknum != nil) == base {
				c.DelChain(&nftables.Chain{Name: ch.Name, Table: t})
			}
		}
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
				Packets: co.Packets, Bytes: co.Bytes})
		}
	}
	slices.SortFunc(out, func(x, y DropCount) int {
		return cmp.Or(strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name), cmp.Compare(x.Direction, y.Direction))
	})
	return out, nil
}
