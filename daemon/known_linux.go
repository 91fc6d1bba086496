package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"

	"github.com/weftnet/weft/internal/atomicfile"
	"github.com/weftnet/weft/mesh"
)

// knownPeersFile keeps the gossip addresses of the members this node last
// saw, so that a restarted daemon rejoins them at once even when its seeds
// are down or are itself (the first node of a --peers cluster).
const knownPeersFile = "known-peers.json"

// loadKnownPeers returns the saved addresses; a missing or unreadable file
// gives none (it is only a hint: the seeds still apply).
func loadKnownPeers(stateDir string) []string {
	b, err := os.ReadFile(filepath.Join(stateDir, knownPeersFile))
	if err != nil {
		return nil
	}
	var addrs []string
	if json.Unmarshal(b, &addrs) != nil {
		return nil
	}
	return addrs
}

// rememberMembers saves the members' gossip addresses when they changed.
// It is called by the reconcile loop only.
func (a *agent) rememberMembers(members []mesh.Peer) {
	var addrs []string
	for _, m := range members {
		if m.Addr.IsValid() {
			addrs = append(addrs, m.Addr.String())
		}
	}
	if len(addrs) == 0 {
		return // never forget everyone because this node is alone for a while
	}
	slices.Sort(addrs)
	if slices.Equal(addrs, a.savedMembers) {
		return
	}
	b, err := json.Marshal(addrs)
	if err == nil {
		err = atomicfile.WriteBytes(filepath.Join(a.cfg.StateDir, knownPeersFile), 0o644, b)
	}
	if err != nil {
		a.log.Warn("save known peers", "err", err)
		return
	}
	a.savedMembers = addrs
}
