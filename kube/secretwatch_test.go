package kube

import (
	"context"
	"encoding/base64"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/crypto"
)

func weftSecret(value string) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretName, Namespace: Namespace},
		Data:       map[string][]byte{SecretKey: []byte(base64.StdEncoding.EncodeToString([]byte(value)))},
	}
}

// TestWatchSecret: the value at the start and every change arrive; a
// change to an unusable value is skipped.
func TestWatchSecret(t *testing.T) {
	client := fake.NewClientset(weftSecret("the first secret, 32 bytes long!"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := make(chan crypto.Secret, 10)
	done := make(chan error, 1)
	go func() {
		done <- WatchSecret(ctx, client, "", nil, func(s crypto.Secret) { got <- s })
	}()
	next := func(want string) {
		t.Helper()
		select {
		case s := <-got:
			if string(s) != want {
				t.Fatalf("got secret %q, want %q", string(s), want)
			}
		case <-ctx.Done():
			t.Fatalf("no secret %q arrived", want)
		}
	}
	next("the first secret, 32 bytes long!")
	secrets := client.CoreV1().Secrets(Namespace)
	bad := weftSecret("short")
	if _, err := secrets.Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.Update(ctx, weftSecret("the second secret, also 32 bytes"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	next("the second secret, also 32 bytes") // the short one was skipped
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
