package daemon

import (
	"errors"
	"fmt"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// directPeerKeys returns the public keys that direct messages to and from
// the member name are sealed and checked with: the key it announces, then
// its announced next key. A member refused for its key gets none. One that
// the reconcile loop has not folded in yet (a node that just joined and
// asks for addresses at once) is looked up in the mesh and checked against
// its Node's pin here.
func (a *agent) directPeerKeys(name string) ([]wgtypes.Key, error) {
	var zero wgtypes.Key
	a.mu.Lock()
	if kp := a.peers[name]; kp != nil && kp.Alive {
		defer a.mu.Unlock()
		if kp.KeyRefused {
			return nil, fmt.Errorf("%s is refused for its key (`weft status peers` says why)", name)
		}
		keys := []wgtypes.Key{kp.PublicKey}
		if kp.NextKey != zero && !kp.NextRefused {
			keys = append(keys, kp.NextKey)
		}
		return keys, nil
	}
	a.mu.Unlock()
	m, ok := a.mesh.Member(name)
	if !ok {
		return nil, fmt.Errorf("%s is no live member", name)
	}
	cur, next := wgtypes.Key(m.Meta.PublicKey), wgtypes.Key(m.Meta.NextPublicKey)
	why, nextRefused := a.checkPin(name, cur, next)
	if why != "" {
		return nil, fmt.Errorf("%s %s", name, why)
	}
	keys := []wgtypes.Key{cur}
	if next != zero && !nextRefused {
		keys = append(keys, next)
	}
	return keys, nil
}

// sealDirect signs a direct message to the member to (directmsg.go).
func (a *agent) sealDirect(to string, tag byte, body []byte) ([]byte, error) {
	pubs, err := a.directPeerKeys(to)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	priv := a.key
	a.mu.Unlock()
	return a.direct.seal(priv, pubs[0], a.cfg.NodeName, to, tag, body)
}

// openDirect checks a direct message (tag, body, MAC) that the mesh says
// the member from sent, and returns its body.
func (a *agent) openDirect(from string, msg []byte) ([]byte, error) {
	pubs, err := a.directPeerKeys(from)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	privs := []wgtypes.Key{a.key}
	if a.rot.pending() {
		// A peer that already took this node's next key addresses it.
		privs = append(privs, a.rot.next)
	}
	a.mu.Unlock()
	body, err := a.direct.open(privs, pubs, from, a.cfg.NodeName, msg)
	if errors.Is(err, errDirectMAC) {
		return nil, fmt.Errorf("from %s: %w (a forged sender, or a node whose key changed a moment ago)", from, err)
	}
	return body, err
}
