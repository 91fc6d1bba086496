package kube

import (
	"errors"
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/version"
)

// ErrNoKubernetes is returned by NewClient when there is neither a
// kubeconfig nor an in-cluster configuration: the daemon then runs without
// Kubernetes (seeds from --peers, secret from --secret-file).
var ErrNoKubernetes = errors.New("no Kubernetes API: no --kubeconfig given and not running in a pod (KUBERNETES_SERVICE_HOST unset)")

// NewClient connects to the Kubernetes API: with the kubeconfig file when
// the path is not empty, else with the in-cluster configuration (the Pod's
// ServiceAccount token) when KUBERNETES_SERVICE_HOST is set, else
// ErrNoKubernetes. It does not contact the API; the first request does.
func NewClient(kubeconfig string) (kubernetes.Interface, *rest.Config, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, nil, fmt.Errorf("in-cluster Kubernetes configuration (is the ServiceAccount token mounted?): %w", err)
		}
	default:
		return nil, nil, ErrNoKubernetes
	}
	cfg.UserAgent = "weft/" + version.Version
	// Built-in types only: protobuf costs the API and the daemon less
	// than JSON, most of all for the Node watch.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	// A node agent makes few requests; these leave room for a burst at
	// start (secret, genesis, own Node) without waiting on the limiter.
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 20, 40
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("make Kubernetes client for %s: %w", cfg.Host, err)
	}
	return cs, cfg, nil
}
