package daemon

import (
	"bytes"
	"context"
	"os"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftnet/weft/crypto"
	"github.com/weftnet/weft/kube"
)

// secretPoll is how often --secret-file is read again. A change is taken
// once two reads in a row agree, so a file caught half written is not.
const secretPoll = 2 * time.Second

// watchSecretFile re-reads --secret-file and takes a new secret in it.
func (a *agent) watchSecretFile(ctx context.Context) error {
	t := time.NewTicker(secretPoll)
	defer t.Stop()
	var last []byte
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, err := os.ReadFile(a.cfg.SecretFile)
		if err != nil {
			a.log.Warn("read the cluster secret file again; keeping the secrets in use", "file", a.cfg.SecretFile, "err", err)
			continue
		}
		stable := bytes.Equal(data, last)
		last = data
		if !stable {
			continue
		}
		s, err := crypto.ParseSecret(data)
		if err != nil {
			a.log.Warn("the cluster secret file holds no usable secret; keeping the secrets in use", "file", a.cfg.SecretFile, "err", err)
			continue
		}
		a.takeSecret(s, "file "+a.cfg.SecretFile)
	}
}

// watchKubeSecret follows the Secret kube-system/weft.
func (a *agent) watchKubeSecret(ctx context.Context) error {
	return kube.WatchSecret(ctx, a.kube, kube.Namespace, a.log, func(s crypto.Secret) {
		a.takeSecret(s, "Secret "+kube.Namespace+"/"+kube.SecretName)
	})
}

// takeSecret holds s from now on, when it is new.
func (a *agent) takeSecret(s crypto.Secret, from string) {
	a.mu.Lock()
	isNew := a.secrets.observe(s, time.Now())
	ends := a.secrets.overlapEnds(a.cfg.SecretOverlap)
	a.mu.Unlock()
	if isNew {
		a.log.Info("new cluster secret: held beside the old one until the overlap ends", "source", from,
			"fingerprint", s.Fingerprint(), "overlap-ends", ends.UTC().Format(time.RFC3339))
		a.trigger()
	}
}

// syncSecrets ends the overlap when it is time, announces the secrets
// held, and sets the gossip keyring: every held secret's key, the primary
// one the newest every live member holds. Reconcile loop only.
func (a *agent) syncSecrets(now time.Time) {
	a.mu.Lock()
	if a.secrets.empty() {
		a.mu.Unlock()
		return
	}
	if a.secrets.expire(now, a.cfg.SecretOverlap) {
		a.log.Info("the secret overlap ended: only the newest cluster secret is held; nodes without it are out", "fingerprint", a.secrets.held[0].fp)
	}
	fps := a.secrets.fingerprints()
	var members [][]string
	for _, kp := range a.peers {
		if kp.Alive && len(kp.Secrets) > 0 {
			members = append(members, kp.Secrets)
		}
	}
	primary := a.secrets.primary(members)
	others := a.secrets.others(primary)
	announced := a.announcedSecrets
	a.mu.Unlock()

	keyring := primary.Fingerprint() + "|" + fps
	if keyring != a.keyringState {
		keys := make([][]byte, len(others))
		for i, s := range others {
			keys[i] = s.GossipKey()
		}
		if err := a.mesh.SetKeys(primary.GossipKey(), keys...); err != nil {
			a.log.Warn("set the gossip keys", "err", err)
		} else {
			a.log.Info("gossip keys set", "primary", primary.Fingerprint(), "held", fps)
			a.keyringState = keyring
		}
	}
	if fps != announced {
		if err := a.mesh.SetMeta(a.meta()); err != nil {
			a.log.Warn("announce the cluster secrets held", "err", err)
			return
		}
		a.mu.Lock()
		a.announcedSecrets = fps
		a.mu.Unlock()
	}
}

// presharedKey is the preshared key with a peer that holds the secrets
// fps: from the newest secret both hold (the primary one for a peer that
// announces none); ok is false when they share none. nil key: insecure.
// Callers hold a.mu.
func (a *agent) presharedKey(fps []string) (psk *wgtypes.Key, ok bool) {
	if a.secrets.empty() {
		return nil, true
	}
	s, ok := a.secrets.shared(fps)
	if !ok {
		return nil, false
	}
	if s == nil {
		s = a.secrets.held[len(a.secrets.held)-1].s
	}
	k := s.PresharedKey()
	return &k, true
}

// SecretsStatus is the "secrets" part of `weft status peers --json`.
type SecretsStatus struct {
	// Held are the fingerprints of the cluster secrets this node holds,
	// newest first; more than one during an overlap.
	Held []string `json:"held"`
	// Gossip is the fingerprint of the secret gossip is encrypted with.
	Gossip string `json:"gossip"`
	// OverlapEnds is when the older secrets are dropped, RFC 3339; empty
	// outside an overlap.
	OverlapEnds string `json:"overlapEnds,omitempty"`
}

// secretsStatus reports the secrets; nil without a secret. Callers hold a.mu.
func (a *agent) secretsStatus() *SecretsStatus {
	if a.secrets.empty() {
		return nil
	}
	st := &SecretsStatus{Held: strings.Split(a.secrets.fingerprints(), ",")}
	if p, _ := a.mesh.Keys(); p != nil {
		for _, h := range a.secrets.held {
			if bytes.Equal(h.s.GossipKey(), p) {
				st.Gossip = h.fp
			}
		}
	}
	if t := a.secrets.overlapEnds(a.cfg.SecretOverlap); !t.IsZero() {
		st.OverlapEnds = t.UTC().Format(time.RFC3339)
	}
	return st
}
