package daemon

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

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

// peersFile keeps the peers this node last knew (key, endpoint, tunnel
// address), so that a restarted daemon sets its tunnel's peers up at once,
// before gossip has told it anything: after a crash the pods' traffic then
// waits for one handshake, not for the mesh.
const peersFile = "peers.json"

// savedPeer is one entry of peersFile.
type savedPeer struct {
	Name       string     `json:"name"`
	PublicKey  string     `json:"publicKey"`
	Endpoint   string     `json:"endpoint,omitempty"`
	TunnelAddr netip.Addr `json:"tunnelAddress,omitzero"`
}

// restorePeers seeds the known peers from peersFile as peers not yet seen
// alive: they keep their tunnels until gossip confirms them or ReapTime
// passes, as a peer that stopped answering does. Setup calls it, before the
// reconcile loop runs.
func (a *agent) restorePeers(now time.Time) {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, peersFile))
	if err != nil {
		return
	}
	var saved []savedPeer
	if err := json.Unmarshal(b, &saved); err != nil {
		a.log.Warn("ignoring unreadable saved peers; gossip brings them back", "file", peersFile, "err", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, sp := range saved {
		key, err := wgtypes.ParseKey(sp.PublicKey)
		if err != nil || sp.Name == "" || sp.Name == a.cfg.NodeName {
			continue
		}
		kp := &knownPeer{LastSeen: now, Endpoint: sp.Endpoint, Announced: sp.TunnelAddr}
		kp.Name = sp.Name
		kp.PublicKey = key
		kp.peer.Endpoint = resolveEndpoint(sp.Endpoint)
		a.peers[sp.Name] = kp
	}
	a.savedPeers = saved
	if len(saved) > 0 {
		a.log.Info("peers restored from the state directory until gossip confirms them", "peers", len(saved))
	}
}

// rememberPeers saves the known peers when they changed. It is called by
// the reconcile loop only.
func (a *agent) rememberPeers() {
	a.mu.Lock()
	peers := make([]savedPeer, 0, len(a.peers))
	for _, kp := range a.peers {
		peers = append(peers, savedPeer{Name: kp.Name, PublicKey: kp.PublicKey.String(), Endpoint: kp.Endpoint, TunnelAddr: kp.Announced})
	}
	a.mu.Unlock()
	slices.SortFunc(peers, func(x, y savedPeer) int { return strings.Compare(x.Name, y.Name) })
	if slices.Equal(peers, a.savedPeers) {
		return
	}
	b, err := json.Marshal(peers)
	if err == nil {
		err = atomicfile.WriteBytes(filepath.Join(a.cfg.StateDir, peersFile), 0o600, b)
	}
	if err != nil {
		a.log.Warn("save known peers", "err", err)
		return
	}
	a.savedPeers = peers
}
