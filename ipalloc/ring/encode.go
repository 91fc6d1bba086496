package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Wire format, version 1 (all integers unsigned varints unless noted):
//
//	"WR" 0x01            magic and format version
//	flags (1 byte)       bit 0: seeded; bit 1: partial (a delta); bit 2: IPv6 range
//	prefix (4+1 bytes)   first address, prefix length (16+1 bytes for an IPv6 range)
//	genesis (16 bytes)   only when seeded
//	origin               length + bytes: the node that encoded the ring
//	names                count, then length + bytes each (owners and free registers refer to them)
//	entries              count, then per entry: start delta, version, kind (1 byte), name index
//	free                 count, then per register: name index, version, count
//
// A 1000-node ring with a few spans per node is some tens of kilobytes.

const formatVersion = 1

var magic = [2]byte{'W', 'R'}

// ErrNewerFormat: the data was written by a newer weft.
var ErrNewerFormat = errors.New("ring encoded by a newer weft")

// Encode serialises r, naming origin (the encoding node) in it so that
// receivers know whose view it is.
func (r *Ring) Encode(origin string) []byte {
	names := map[string]int{}
	var list []string
	name := func(n string) int {
		if i, ok := names[n]; ok {
			return i
		}
		names[n] = len(list)
		list = append(list, n)
		return len(list) - 1
	}
	for _, e := range r.entries {
		name(e.Owner)
	}
	owners := make([]string, 0, len(r.free))
	for k := range r.free {
		owners = append(owners, k)
	}
	slices.Sort(owners)
	for _, k := range owners {
		name(k)
	}

	b := make([]byte, 0, 64+len(r.entries)*8+len(list)*12)
	b = append(b, magic[0], magic[1], formatVersion)
	var flags byte
	if r.Seeded() {
		flags |= 1
	}
	if r.partial {
		flags |= 2
	}
	if r.prefix.Addr().Is6() {
		flags |= 4
	}
	b = append(b, flags)
	b = append(b, r.prefix.Addr().AsSlice()...)
	b = append(b, byte(r.prefix.Bits()))
	if r.Seeded() {
		b = append(b, r.genesis[:]...)
	}
	b = appendString(b, origin)
	b = binary.AppendUvarint(b, uint64(len(list)))
	for _, n := range list {
		b = appendString(b, n)
	}
	b = binary.AppendUvarint(b, uint64(len(r.entries)))
	var prev uint32
	for _, e := range r.entries {
		b = binary.AppendUvarint(b, uint64(e.Start-prev))
		prev = e.Start
		b = binary.AppendUvarint(b, e.Version)
		b = append(b, byte(e.Kind))
		b = binary.AppendUvarint(b, uint64(names[e.Owner]))
	}
	b = binary.AppendUvarint(b, uint64(len(owners)))
	for _, k := range owners {
		f := r.free[k]
		b = binary.AppendUvarint(b, uint64(names[k]))
		b = binary.AppendUvarint(b, f.Version)
		b = binary.AppendUvarint(b, f.Count)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

type reader struct {
	b   []byte
	err error
}

func (d *reader) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

func (d *reader) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n]
	d.b = d.b[n:]
	return out
}

func (d *reader) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad or truncated number")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// count reads a count of items of at least minSize bytes each.
func (d *reader) count(minSize int) int {
	v := d.uvarint()
	if d.err == nil && v > uint64(len(d.b)/minSize) {
		d.fail("count %d larger than the data", v)
		return 0
	}
	return int(v)
}

func (d *reader) str() string {
	n := d.uvarint()
	if d.err == nil && n > MaxNameLen {
		d.fail("name of %d bytes", n)
		return ""
	}
	return string(d.bytes(int(n)))
}

// Decode parses what Encode produced: the ring and its origin. Any input
// gives either a valid ring or an error, never a panic.
func Decode(data []byte) (*Ring, string, error) {
	r, origin, err := decode(data)
	if err != nil {
		return nil, "", fmt.Errorf("decode ring: %w", err)
	}
	return r, origin, nil
}

func decode(data []byte) (*Ring, string, error) {
	d := &reader{b: data}
	head := d.bytes(4)
	if d.err != nil {
		return nil, "", d.err
	}
	if head[0] != magic[0] || head[1] != magic[1] {
		return nil, "", errors.New("not a weft ring")
	}
	if head[2] > formatVersion {
		return nil, "", fmt.Errorf("%w (format %d, this weft reads up to %d)", ErrNewerFormat, head[2], formatVersion)
	}
	if head[2] != formatVersion {
		return nil, "", fmt.Errorf("unknown format %d", head[2])
	}
	flags := head[3]
	if flags&^7 != 0 {
		return nil, "", fmt.Errorf("unknown flags %#x", flags)
	}
	alen := 4
	if flags&4 != 0 {
		alen = 16
	}
	pb := d.bytes(alen + 1)
	if d.err != nil {
		return nil, "", d.err
	}
	addr, _ := netip.AddrFromSlice(pb[:alen])
	prefix := netip.PrefixFrom(addr, int(pb[alen]))
	if !prefix.IsValid() || prefix.Masked() != prefix {
		return nil, "", fmt.Errorf("bad prefix %v", prefix)
	}
	r, err := NewEmpty(prefix)
	if err != nil {
		return nil, "", err
	}
	r.partial = flags&2 != 0
	if flags&1 != 0 {
		copy(r.genesis[:], d.bytes(16))
		if d.err == nil && r.genesis.IsZero() {
			return nil, "", errors.New("seeded ring with a zero genesis")
		}
	}
	origin := d.str()
	names := make([]string, d.count(1))
	for i := range names {
		names[i] = d.str()
	}
	nameAt := func(i uint64) string {
		if i >= uint64(len(names)) {
			d.fail("name index %d out of %d", i, len(names))
			return ""
		}
		return names[i]
	}
	n := d.count(4)
	if d.err == nil && uint64(n) > r.size {
		return nil, "", fmt.Errorf("%d entries in a range of %d addresses", n, r.size)
	}
	r.entries = make([]Entry, 0, n)
	var start uint64
	for i := 0; i < n && d.err == nil; i++ {
		delta := d.uvarint()
		if i > 0 && delta == 0 {
			d.fail("entries %d and %d overlap", i-1, i)
		}
		start += delta
		if delta >= r.size || start >= r.size {
			d.fail("entry %d starts outside the range", i)
		}
		var e Entry
		e.Start = uint32(start)
		e.Version = d.uvarint()
		k := d.bytes(1)
		if d.err != nil {
			break
		}
		e.Kind = Kind(k[0])
		e.Owner = nameAt(d.uvarint())
		r.entries = append(r.entries, e)
	}
	nf := d.count(3)
	for i := 0; i < nf && d.err == nil; i++ {
		k := nameAt(d.uvarint())
		f := Free{Version: d.uvarint(), Count: d.uvarint()}
		if _, dup := r.free[k]; dup {
			d.fail("free register of %q twice", k)
		}
		r.free[k] = f
	}
	if d.err != nil {
		return nil, "", d.err
	}
	if len(d.b) != 0 {
		return nil, "", fmt.Errorf("%d bytes of trailing data", len(d.b))
	}
	if err := r.Validate(); err != nil {
		return nil, "", err
	}
	return r, origin, nil
}
