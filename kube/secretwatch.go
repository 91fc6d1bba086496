package kube

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/crypto"
)

// WatchSecret watches the Secret weft of namespace (default kube-system)
// and calls onSecret with its value at the start and on every change,
// until ctx is done; it returns nil then. A Secret that holds no usable
// secret is logged and skipped: the node keeps the secrets it has. Only
// that one Secret is listed and watched (a field selector on its name).
// onSecret is called from one goroutine at a time.
func WatchSecret(ctx context.Context, client kubernetes.Interface, namespace string, log *slog.Logger, onSecret func(crypto.Secret)) error {
	if namespace == "" {
		namespace = Namespace
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	secrets := client.CoreV1().Secrets(namespace)
	only := func(o metav1.ListOptions) metav1.ListOptions {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", SecretName).String()
		return o
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return secrets.List(ctx, only(o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return secrets.Watch(ctx, only(o))
		},
	}
	take := func(obj any) {
		s, ok := obj.(*corev1.Secret)
		if !ok || s.Name != SecretName {
			return
		}
		v, err := secretValue(s)
		if err != nil {
			log.Warn("the Secret changed but holds no usable secret; keeping the secrets in use", "err", err)
			return
		}
		onSecret(v)
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: cache.ToListWatcherWithWatchListSemantics(lw, client),
		ObjectType:    &corev1.Secret{},
		ResyncPeriod:  10 * time.Minute,
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    take,
			UpdateFunc: func(_, obj any) { take(obj) },
		},
	})
	ctrl.RunWithContext(ctx)
	return nil
}
