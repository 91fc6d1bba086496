package kubelab

import (
	"context"
	"crypto/x509/pkix"
	"fmt"
	"slices"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// ServiceAccountToken creates the ServiceAccount (and its namespace) unless
// it exists and returns a token for it from the TokenRequest API, valid for
// an hour, as the kubelet would mount into a Pod. Use it as a bearer token
// (rest.Config.BearerToken) against Server() with CACert().
func (c *Cluster) ServiceAccountToken(ctx context.Context, namespace, name string) (string, error) {
	if err := c.EnsureNamespace(ctx, namespace); err != nil {
		return "", err
	}
	sas := c.clientset.CoreV1().ServiceAccounts(namespace)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := sas.Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
	tok, err := sas.CreateToken(ctx, name, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request token for service account %s/%s: %w", namespace, name, err)
	}
	return tok.Status.Token, nil
}
