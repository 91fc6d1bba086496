package kubelab

import (
	"crypto/x509/pkix"
	"fmt"
	"slices"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AdminUser is the identity of KubeconfigPath, RESTConfig and Clientset; it
// is in the group system:masters.
const AdminUser = "kubelab-admin"

// KubeconfigPath is the path of a kubeconfig with the admin's rights, the
// server URL and embedded certificates, for a process (a daemon) that can
// reach Server(): in Config.Netns, or in any namespace with a route to
// BindAddr. It lives until Close.
func (c *Cluster) KubeconfigPath() string { return c.adminKubeconfig }

// KubeconfigFor writes a kubeconfig that authenticates as user in groups
// with a client certificate of the lab's CA, e.g. user
// "system:serviceaccount:kube-system:weft" with groups
// "system:serviceaccounts" and "system:serviceaccounts:kube-system" to act as
// that ServiceAccount (RBAC matches its bindings by the user name). The
// group system:authenticated is added by the apiserver. Asking again for
// the same identity returns the same file.
func (c *Cluster) KubeconfigFor(user string, groups []string) (string, error) {
	return c.kubeconfig(user, groups)
}

// RESTConfigFor is a client configuration authenticating as user in groups,
// like KubeconfigFor, for clients in the test process.
func (c *Cluster) RESTConfigFor(user string, groups []string) (*rest.Config, error) {
	kp, err := c.ca.issue(pkix.Name{CommonName: user, Organization: groups}, nil, nil)
	if err != nil {
		return nil, err
	}
	cfg := c.RESTConfig()
	cfg.CertData, cfg.KeyData = kp.certPEM, kp.keyPEM
	return cfg, nil
}

func (c *Cluster) kubeconfig(user string, groups []string) (string, error) {
	key := user + "\x00" + strings.Join(slices.Sorted(slices.Values(groups)), "\x00")
	c.mu.Lock()
	defer c.mu.Unlock()
	if path, ok := c.kubeconfs[key]; ok {
		return path, nil
	}
	if c.closed {
		return "", fmt.Errorf("kubeconfig for %s: the lab is closed", user)
	}
	kp, err := c.ca.issue(pkix.Name{CommonName: user, Organization: groups}, nil, nil)
	if err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubelab"] = &clientcmdapi.Cluster{Server: c.server, CertificateAuthorityData: c.ca.certPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: kp.certPEM, ClientKeyData: kp.keyPEM}
	cfg.Contexts["kubelab"] = &clientcmdapi.Context{Cluster: "kubelab", AuthInfo: user}
	cfg.CurrentContext = "kubelab"
	path := c.path(fmt.Sprintf("kubeconfig-%d", len(c.kubeconfs)))
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return "", fmt.Errorf("write kubeconfig for %s: %w", user, err)
	}
	c.kubeconfs[key] = path
	return path, nil
}
