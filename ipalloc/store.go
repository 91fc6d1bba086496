package ipalloc

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/weftnet/weft/ipalloc/ring"
)

// StateFile is the name of the allocator's state file under Config.StateDir.
const StateFile = "ipam.db"

// storeFormat is the layout of the state file; a file with a higher number
// was written by a newer weft and is refused.
const storeFormat = 1

var (
	bucketMeta   = []byte("meta")
	bucketAllocs = []byte("allocations")
	keyFormat    = []byte("format")
	keyRing      = []byte("ring")
	keyClaims    = []byte("claims")
	keyPair      = []byte("pairCIDR") // the IPv6 range of a dual-stack cluster; absent in IPv4-only files
)

// store is the durable state: the ring as this node last knew it, its
// pending reclaim claims and every allocation, in a bbolt file. Every
// write is committed and fsynced before it returns; new allocations
// written at once share a transaction.
type store struct {
	path string
	db   *bolt.DB
}

type storedAlloc struct {
	Addr    netip.Addr        `json:"addr"`
	Meta    map[string]string `json:"meta,omitempty"`
	Created time.Time         `json:"created"`
}

type storedClaim struct {
	Dead    string    `json:"dead"`
	Start   uint64    `json:"start"`
	End     uint64    `json:"end"`
	Version uint64    `json:"version"`
	Kind    ring.Kind `json:"kind"`
	Owner   string    `json:"owner"`
}

// loaded is what openStore found on disk.
type loaded struct {
	ring   *ring.Ring // nil: a new file
	allocs []Allocation
	claims []storedClaim
	pair   netip.Prefix // the IPv6 range paired with the ring's; zero if none was ever set
}

// corrupt wraps a problem with the state file in an error that says what
// to do about it.
func corrupt(path string, err error) error {
	return fmt.Errorf("IPAM state file %s is unreadable: %w; move it away to start empty "+
		"(addresses of the pods running on this node may then be handed out again)", path, err)
}

func openStore(dir string) (s *store, l loaded, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, l, fmt.Errorf("create state directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, StateFile)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, l, fmt.Errorf("IPAM state file %s is locked: is another weft daemon running with --state-dir %s?", path, dir)
		}
		return nil, l, corrupt(path, err)
	}
	// A Batch waits this long for more allocations to commit with: about
	// one fsync here, so a lone ADD barely notices and a burst shares commits.
	db.MaxBatchDelay = time.Millisecond
	s = &store{path: path, db: db}
	defer func() {
		// bbolt may panic on a damaged page; a bad file must stop the
		// daemon with advice, not crash it.
		if p := recover(); p != nil {
			err = corrupt(path, fmt.Errorf("%v", p))
		}
		if err != nil {
			db.Close()
			s = nil
		}
	}()
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			if tx.Bucket(bucketAllocs) != nil {
				return corrupt(path, errors.New("no format number"))
			}
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if _, err = tx.CreateBucket(bucketAllocs); err != nil {
				return err
			}
			return meta.Put(keyFormat, []byte(strconv.Itoa(storeFormat)))
		}
		f, err := strconv.Atoi(string(meta.Get(keyFormat)))
		switch {
		case err != nil:
			return corrupt(path, fmt.Errorf("bad format number %q", meta.Get(keyFormat)))
		case f > storeFormat:
			return fmt.Errorf("IPAM state file %s was written by a newer weft (format %d, this weft reads up to %d): "+
				"run the newer weft again, or move the file away to start empty "+
				"(addresses of the pods running on this node may then be handed out again)", path, f, storeFormat)
		case f < 1:
			return corrupt(path, fmt.Errorf("bad format number %d", f))
		}
		if b := meta.Get(keyRing); b != nil {
			r, _, err := ring.Decode(b)
			if err != nil {
				return corrupt(path, err)
			}
			l.ring = r
		}
		if b := meta.Get(keyPair); b != nil {
			if l.pair, err = netip.ParsePrefix(string(b)); err != nil {
				return corrupt(path, fmt.Errorf("IPv6 range: %w", err))
			}
		}
		if b := meta.Get(keyClaims); b != nil {
			if err := json.Unmarshal(b, &l.claims); err != nil {
				return corrupt(path, fmt.Errorf("claims: %w", err))
			}
		}
		allocs := tx.Bucket(bucketAllocs)
		if allocs == nil {
			return corrupt(path, errors.New("no allocations bucket"))
		}
		return allocs.ForEach(func(k, v []byte) error {
			key, ok := parseKey(k)
			if !ok {
				return corrupt(path, fmt.Errorf("bad allocation key %q", k))
			}
			var sa storedAlloc
			if err := json.Unmarshal(v, &sa); err != nil || !sa.Addr.IsValid() {
				return corrupt(path, fmt.Errorf("allocation of %v: bad record %q", key, v))
			}
			l.allocs = append(l.allocs, Allocation{Key: key, Addr: sa.Addr, Meta: sa.Meta, Created: sa.Created})
			return nil
		})
	})
	if err != nil {
		return nil, loaded{}, err
	}
	return s, l, nil
}

func (k Key) bytes() []byte { return []byte(k.ContainerID + "\x00" + k.IfName) }

func parseKey(b []byte) (Key, bool) {
	id, ifname, ok := strings.Cut(string(b), "\x00")
	return Key{ContainerID: id, IfName: ifname}, ok && id != "" && ifname != ""
}

// saveAlloc writes one allocation and the ring (with this node's free count).
func (s *store) saveAlloc(a Allocation) error {
	v, err := json.Marshal(storedAlloc{Addr: a.Addr, Meta: a.Meta, Created: a.Created})
	if err != nil {
		return err
	}
	// Allocations written at about the same time (a burst of ADDs) share
	// one commit and its fsync.
	err = s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAllocs).Put(a.Key.bytes(), v)
	})
	if err != nil {
		return fmt.Errorf("write IPAM state file %s: %w", s.path, err)
	}
	return nil
}

// deleteAllocs removes allocations.
func (s *store) deleteAllocs(keys []Key) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketAllocs)
		for _, k := range keys {
			if err := b.Delete(k.bytes()); err != nil {
				return err
			}
		}
		return nil
	})
}

// saveRing writes the ring and the pending claims.
func (s *store) saveRing(r []byte, claims []storedClaim) error {
	c, err := json.Marshal(claims)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put(keyRing, r); err != nil {
			return err
		}
		return meta.Put(keyClaims, c)
	})
}

// savePair records the IPv6 range paired with the ring's.
func (s *store) savePair(p netip.Prefix) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyPair, []byte(p.String()))
	})
}

func (s *store) update(fn func(*bolt.Tx) error) error {
	if err := s.db.Update(fn); err != nil {
		return fmt.Errorf("write IPAM state file %s: %w", s.path, err)
	}
	return nil
}

func (s *store) close() error { return s.db.Close() }
