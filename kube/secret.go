package kube

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/crypto"
)

// The Secret that holds the cluster secret when none is mounted.
const (
	SecretName = "weft"
	SecretKey  = "secret"
	secretLen  = 32
)

// EnsureSecret returns the cluster secret kept in the Secret weft (key
// "secret") of namespace (default kube-system), creating it with 32 random
// bytes when it does not exist. Creation is create-if-absent: when several
// daemons start at once, one Create succeeds, the others get AlreadyExists,
// read the winner's Secret and return its value, so every daemon ends with
// the same secret. An operator who wants to choose the value creates the
// Secret before weft starts:
//
//	kubectl -n kube-system create secret generic weft --from-file=secret=/path/to/32-random-bytes
func EnsureSecret(ctx context.Context, client kubernetes.Interface, namespace string) (crypto.Secret, error) {
	if namespace == "" {
		namespace = Namespace
	}
	secrets := client.CoreV1().Secrets(namespace)
	got, err := secrets.Get(ctx, SecretName, metav1.GetOptions{})
	if err == nil {
		return secretValue(got)
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("read Secret %s/%s (RBAC: secrets get): %w", namespace, SecretName, err)
	}
	value := make([]byte, secretLen)
	if _, err := rand.Read(value); err != nil {
		return nil, fmt.Errorf("generate cluster secret: %w", err)
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      SecretName,
			Namespace: namespace,
			Labels:    map[string]string{"app.kubernetes.io/name": "weft"},
			Annotations: map[string]string{
				"weft.dev/description": "weft's cluster secret: gossip encryption and WireGuard preshared keys are derived from it",
			},
		},
		Type: corev1.SecretTypeOpaque,
		// Base64 text, as `head -c 32 /dev/urandom | base64` writes it:
		// raw random bytes would be trimmed like a file's text when read
		// (decodeLikeSecretFile), losing any leading or trailing byte that
		// happens to be white space.
		Data: map[string][]byte{SecretKey: []byte(base64.StdEncoding.EncodeToString(value))},
	}
	created, err := secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: fieldManager})
	switch {
	case err == nil:
		return secretValue(created)
	case apierrors.IsAlreadyExists(err):
		// Another daemon created it first: use its value.
		got, err := secrets.Get(ctx, SecretName, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read Secret %s/%s another daemon created: %w", namespace, SecretName, err)
		}
		return secretValue(got)
	default:
		return nil, fmt.Errorf("create Secret %s/%s (RBAC: secrets create): %w", namespace, SecretName, err)
	}
}

// ErrBadSecret says the Secret weft exists but holds no usable secret.
var ErrBadSecret = errors.New("the Secret weft holds no usable cluster secret")

func secretValue(s *corev1.Secret) (crypto.Secret, error) {
	v, ok := s.Data[SecretKey]
	if !ok {
		return nil, fmt.Errorf("%w: Secret %s/%s has no key %q; recreate it with at least %d random bytes under that key",
			ErrBadSecret, s.Namespace, s.Name, SecretKey, crypto.MinSecretLen)
	}
	v = decodeLikeSecretFile(v)
	if len(v) < crypto.MinSecretLen {
		return nil, fmt.Errorf("%w: key %q of Secret %s/%s has %d bytes, need at least %d",
			ErrBadSecret, SecretKey, s.Namespace, s.Name, len(v), crypto.MinSecretLen)
	}
	return crypto.Secret(bytes.Clone(v)), nil
}

// decodeLikeSecretFile reads a value as crypto.ReadSecret reads a file, so
// a node given the same Secret mounted as a file (--secret-file) derives
// the same keys: surrounding white space trimmed, standard base64 (padded
// or not) decoded, anything else taken as it is. 32 random bytes, as
// EnsureSecret makes, are not base64 text and stay as they are.
func decodeLikeSecretFile(v []byte) []byte {
	text := bytes.TrimSpace(v)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(string(text)); err == nil {
			return b
		}
	}
	return text
}
