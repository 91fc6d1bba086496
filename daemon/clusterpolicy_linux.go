package daemon

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	cnp "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	cnpinformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"
	cnplisters "sigs.k8s.io/network-policy-api/pkg/client/listers/apis/v1alpha2"
)

// clusterPolicyCheck is how often the daemon looks for the
// ClusterNetworkPolicy CRD while it is not installed.
const clusterPolicyCheck = 5 * time.Second

// clusterPolicies watches ClusterNetworkPolicies (policy.networking.k8s.io
// v1alpha2) through the network-policy-api module's generated clientset
// and informers. The CRD is optional: until it is served, List returns
// nothing and the watch starts as soon as discovery shows it.
type clusterPolicies struct {
	cfg      *rest.Config
	onChange func()

	mu     sync.Mutex
	lister cnplisters.ClusterNetworkPolicyLister // nil until the CRD is served and synced
}

// List returns the ClusterNetworkPolicies in the cache.
func (c *clusterPolicies) List() []*cnp.ClusterNetworkPolicy {
	c.mu.Lock()
	l := c.lister
	c.mu.Unlock()
	if l == nil {
		return nil
	}
	out, _ := l.List(labels.Everything())
	return out
}

// Watching reports whether the CRD is served and the cache synced.
func (c *clusterPolicies) Watching() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lister != nil
}

// Run waits for the CRD, then watches until ctx is done.
func (c *clusterPolicies) Run(ctx context.Context) error {
	disc, err := discovery.NewDiscoveryClientForConfig(c.cfg)
	if err != nil {
		return fmt.Errorf("ClusterNetworkPolicy: discovery client: %w", err)
	}
	for !c.served(disc) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(clusterPolicyCheck):
		}
	}
	client, err := cnpclient.NewForConfig(c.cfg)
	if err != nil {
		return fmt.Errorf("ClusterNetworkPolicy: client: %w", err)
	}
	f := cnpinformers.NewSharedInformerFactory(client, 0)
	inf := f.Policy().V1alpha2().ClusterNetworkPolicies()
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.onChange() },
		UpdateFunc: func(any, any) { c.onChange() },
		DeleteFunc: func(any) { c.onChange() },
	}); err != nil {
		return fmt.Errorf("watch ClusterNetworkPolicies: %w", err)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	c.mu.Lock()
	c.lister = inf.Lister()
	c.mu.Unlock()
	c.onChange()
	<-ctx.Done()
	return nil
}

// served reports whether the API server serves ClusterNetworkPolicies in
// v1alpha2.
func (c *clusterPolicies) served(disc discovery.DiscoveryInterface) bool {
	rl, err := disc.ServerResourcesForGroupVersion(cnp.SchemeGroupVersion.String())
	if err != nil {
		return false
	}
	for _, r := range rl.APIResources {
		if r.Name == "clusternetworkpolicies" {
			return true
		}
	}
	return false
}
