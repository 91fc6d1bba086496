// Package kubelab runs a real Kubernetes API for tests: etcd and
// kube-apiserver as local processes, with certificates made on the spot and
// RBAC on. No controller-manager, scheduler or kubelet runs; the test plays
// the kubelet with CreateNode, CreatePod and SetPodIPs.
//
// etcd comes from Debian's etcd-server package (/usr/bin/etcd);
// kube-apiserver is built from source by `make kube-apiserver` into
// .cache/bin. StartForTest skips the test when either is missing.
//
// With Config.Netns both servers run inside that network namespace, so
// daemons in the lab's namespaces can reach them; the Cluster's own clients
// still work from the test process, whose sockets are made inside the
// namespace.
//
// The ServiceAccount admission plugin is off: nothing creates the default
// ServiceAccount of a namespace without a controller-manager, and with the
// plugin on every Pod without one would be refused.
package kubelab

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Config says how to run the lab's API. The zero value is a lab on the
// host's loopback with the default binaries.
type Config struct {
	// APIServerBinary is the kube-apiserver to run. Default: the
	// environment variable WEFT_KUBE_APISERVER (the Makefile exports it),
	// else .cache/bin/kube-apiserver under the repository root.
	APIServerBinary string
	// EtcdBinary is the etcd to run. Default: /usr/bin/etcd, else etcd on PATH.
	EtcdBinary string
	// Netns is the path of a network namespace (e.g. /run/netns/x) to run
	// etcd and kube-apiserver in. Default: the test process's own.
	Netns string
	// BindAddr is the address kube-apiserver listens on and advertises; it
	// must exist in Netns. Default: 127.0.0.1. etcd always listens on the
	// namespace's loopback, which Start brings up.
	BindAddr netip.Addr
	// ServiceCIDR is the Service ClusterIP range. Default: 10.96.0.0/16,
	// which is outside weft's default pod range.
	ServiceCIDR netip.Prefix
	// StartTimeout bounds the wait for etcd and for kube-apiserver's
	// /readyz. Default: 3 minutes (startup takes about ten seconds on an
	// idle machine, much longer on two busy cores).
	StartTimeout time.Duration
	// APIServerArgs are appended to kube-apiserver's flags; a later flag
	// wins, so they can override the lab's choices.
	APIServerArgs []string
	// Logger gets progress messages. Default: discard.
	Logger *slog.Logger
}

// Cluster is a running etcd and kube-apiserver. Its methods are safe for
// concurrent use.
type Cluster struct {
	cfg       Config
	dir       string // certificates, kubeconfigs, logs
	etcdDir   string // etcd's data, on tmpfs when there is one
	ca        *authority
	server    string
	rest      *rest.Config
	clientset kubernetes.Interface
	etcd      *process
	apiserver *process

	mu        sync.Mutex // guards kubeconfigs and closed
	closed    bool
	kubeconfs map[string]string // identity key -> kubeconfig path

	adminKubeconfig string
	closeErr        error
}

// Start runs etcd and kube-apiserver and waits until the API is ready. On
// error everything it started is stopped again. ctx bounds only the start.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	removeStale(cfg.Logger.Info)
	// The free ports are only free until a server binds them: another
	// process may take one first. Try again with new ones then.
	const attempts = 3
	for i := 1; ; i++ {
		dir, err := os.MkdirTemp("", dirPattern("kubelab-"))
		if err != nil {
			return nil, fmt.Errorf("make lab directory: %w", err)
		}
		c := &Cluster{cfg: cfg, dir: dir, kubeconfs: map[string]string{}}
		err = c.start(ctx)
		if err == nil {
			return c, nil
		}
		err = errors.Join(err, c.Close())
		if i == attempts || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
		cfg.Logger.Warn("a port was taken; starting again", "attempt", i, "err", err)
	}
}

func (cfg Config) withDefaults() (Config, error) {
	if cfg.APIServerBinary == "" {
		cfg.APIServerBinary = DefaultAPIServerBinary()
	}
	if cfg.EtcdBinary == "" {
		cfg.EtcdBinary = DefaultEtcdBinary()
	}
	if !cfg.BindAddr.IsValid() {
		cfg.BindAddr = netip.MustParseAddr("127.0.0.1")
	}
	if !cfg.ServiceCIDR.IsValid() {
		cfg.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 3 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	for _, bin := range []string{cfg.APIServerBinary, cfg.EtcdBinary} {
		if _, err := os.Stat(bin); err != nil {
			return cfg, fmt.Errorf("%w: %v", ErrMissingBinary, err)
		}
	}
	return cfg, nil
}

// ErrMissingBinary says etcd or kube-apiserver is not installed: install
// etcd-server, and run `make kube-apiserver`.
var ErrMissingBinary = errors.New("etcd or kube-apiserver missing (apt-get install etcd-server; make kube-apiserver)")

// DefaultEtcdBinary is where Config.EtcdBinary defaults to.
func DefaultEtcdBinary() string {
	const debian = "/usr/bin/etcd"
	if _, err := os.Stat(debian); err == nil {
		return debian
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	return debian
}

// DefaultAPIServerBinary is where Config.APIServerBinary defaults to.
func DefaultAPIServerBinary() string {
	if p := os.Getenv("WEFT_KUBE_APISERVER"); p != "" {
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		return filepath.Join(".cache", "bin", "kube-apiserver")
	}
	for d := dir; ; d = filepath.Dir(d) {
		if isRepoRoot(d) {
			return filepath.Join(d, ".cache", "bin", "kube-apiserver")
		}
		if filepath.Dir(d) == d {
			return filepath.Join(dir, ".cache", "bin", "kube-apiserver")
		}
	}
}

func isRepoRoot(dir string) bool {
	mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	first, _, _ := bytes.Cut(mod, []byte("\n"))
	return strings.TrimSpace(string(first)) == "module github.com/weftnet/weft"
}

func (c *Cluster) start(ctx context.Context) error {
	began := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()

	if c.cfg.Netns != "" {
		if err := loopbackUp(c.cfg.Netns); err != nil {
			return fmt.Errorf("prepare network namespace %s: %w", c.cfg.Netns, err)
		}
	}
	if err := c.writePKI(); err != nil {
		return err
	}
	etcdURL, err := c.startEtcd(ctx)
	if err != nil {
		return err
	}
	c.cfg.Logger.Info("etcd ready", "url", etcdURL, "elapsed", time.Since(began))
	if err := c.startAPIServer(ctx, etcdURL); err != nil {
		return err
	}
	if c.adminKubeconfig, err = c.kubeconfig(AdminUser, []string{"system:masters"}); err != nil {
		return err
	}
	c.cfg.Logger.Info("kube-apiserver ready", "server", c.server, "elapsed", time.Since(began))
	return nil
}

// writePKI makes the CA, the serving certificate, the admin client and the
// ServiceAccount token keys under the lab directory.
func (c *Cluster) writePKI() error {
	ca, err := newAuthority()
	if err != nil {
		return err
	}
	c.ca = ca
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, c.cfg.BindAddr.AsSlice(), firstServiceIP(c.cfg.ServiceCIDR).AsSlice()}
	names := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	serving, err := ca.issue(pkix.Name{CommonName: "kube-apiserver"}, ips, names)
	if err != nil {
		return err
	}
	saPrivate, saPublic, err := serviceAccountKeys()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt":        ca.certPEM,
		"apiserver.crt": serving.certPEM,
		"apiserver.key": serving.keyPEM,
		"sa.key":        saPrivate,
		"sa.pub":        saPublic,
	}
	for name, data := range files {
		if err := os.WriteFile(c.path(name), data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

func firstServiceIP(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

func (c *Cluster) path(name string) string { return filepath.Join(c.dir, name) }

// startEtcd runs a one-member etcd on the namespace's loopback and waits
// for its /health; it returns the client URL.
func (c *Cluster) startEtcd(ctx context.Context) (string, error) {
	// etcd keeps its data in memory when it can: this etcd (3.4) has no
	// --unsafe-no-fsync, and fsync on a busy disk slows every write.
	dataDir, err := os.MkdirTemp("/dev/shm", dirPattern("kubelab-etcd-"))
	if err != nil {
		dataDir, err = os.MkdirTemp("", dirPattern("kubelab-etcd-"))
	}
	if err != nil {
		return "", fmt.Errorf("make etcd data directory: %w", err)
	}
	c.etcdDir = dataDir
	clientPort, err := freePort(c.cfg.Netns, "127.0.0.1")
	if err != nil {
		return "", err
	}
	peerPort, err := freePort(c.cfg.Netns, "127.0.0.1")
	if err != nil {
		return "", err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(clientPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	args := []string{
		"--name=kubelab",
		"--data-dir=" + dataDir,
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=kubelab=" + peerURL,
		"--initial-cluster-state=new",
		"--quota-backend-bytes=" + strconv.Itoa(256<<20),
		"--snapshot-count=10000",
		"--logger=zap",
		"--log-outputs=stderr",
	}
	if etcdHasFlag(c.cfg.EtcdBinary, "--unsafe-no-fsync") {
		args = append(args, "--unsafe-no-fsync")
	}
	c.etcd, err = c.run("etcd", c.cfg.EtcdBinary, args)
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: c.dialer(), DisableKeepAlives: true}}
	err = poll(ctx, c.etcd, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"true"`)) {
			return fmt.Errorf("etcd /health: %s %s", resp.Status, body)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("wait for etcd: %w\n%s", err, c.etcd.tail(20))
	}
	return clientURL, nil
}

func etcdHasFlag(bin, flag string) bool {
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	return bytes.Contains(out, []byte(flag))
}

func (c *Cluster) dialer() func(ctx context.Context, network, addr string) (net.Conn, error) {
	if d := netnsDialer(c.cfg.Netns); d != nil {
		return d
	}
	return (&net.Dialer{}).DialContext
}

// startAPIServer runs kube-apiserver against etcd and waits for /readyz.
func (c *Cluster) startAPIServer(ctx context.Context, etcdURL string) error {
	bind := c.cfg.BindAddr.String()
	port, err := freePort(c.cfg.Netns, bind)
	if err != nil {
		return err
	}
	c.server = "https://" + net.JoinHostPort(bind, strconv.Itoa(port))
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + bind,
		"--advertise-address=" + bind,
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + c.path("certs"),
		"--tls-cert-file=" + c.path("apiserver.crt"),
		"--tls-private-key-file=" + c.path("apiserver.key"),
		"--client-ca-file=" + c.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--service-cluster-ip-range=" + c.cfg.ServiceCIDR.Masked().String(),
		"--authorization-mode=Node,RBAC",
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		// The apiserver would write its loopback address into the
		// kubernetes Endpoints, which validation refuses.
		"--endpoint-reconciler-type=none",
		"--enable-priority-and-fairness=false",
		"--profiling=false",
	}
	args = append(args, c.cfg.APIServerArgs...)
	c.apiserver, err = c.run("kube-apiserver", c.cfg.APIServerBinary, args)
	if err != nil {
		return err
	}

	c.rest = &rest.Config{
		Host: c.server,
		TLSClientConfig: rest.TLSClientConfig{
			CAData: c.ca.certPEM,
		},
		Dial:  netnsDialer(c.cfg.Netns),
		QPS:   200,
		Burst: 400,
	}
	admin, err := c.ca.issue(pkix.Name{CommonName: "kubelab-admin", Organization: []string{"system:masters"}}, nil, nil)
	if err != nil {
		return err
	}
	c.rest.CertData, c.rest.KeyData = admin.certPEM, admin.keyPEM
	c.clientset, err = kubernetes.NewForConfig(c.rest)
	if err != nil {
		return fmt.Errorf("make admin clientset: %w", err)
	}
	err = poll(ctx, c.apiserver, func(ctx context.Context) error {
		body, err := c.clientset.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("/readyz: %w: %s", err, lastLines(string(body), 5))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for kube-apiserver: %w\n%s", err, c.apiserver.tail(30))
	}
	return nil
}

// LogTail returns the last n lines of both servers' logs, for a failing
// test to print before Close removes them.
func (c *Cluster) LogTail(n int) string {
	return strings.TrimSpace(c.etcd.tail(n) + "\n" + c.apiserver.tail(n))
}

// Close stops kube-apiserver and etcd and removes the lab's directories.
// It may be called more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return c.closeErr
	}
	c.closed = true
	errs := []error{c.apiserver.stop(), c.etcd.stop()}
	for _, d := range []string{c.etcdDir, c.dir} {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	c.closeErr = errors.Join(errs...)
	return c.closeErr
}

// Server is the API's URL, https://BindAddr:port.
func (c *Cluster) Server() string { return c.server }

// CACert is the PEM certificate of the lab's CA, which signed the
// apiserver's serving certificate.
func (c *Cluster) CACert() []byte { return c.ca.certPEM }

// RESTConfig is a fresh copy of the admin's client configuration
// (system:masters). With Config.Netns its Dial makes sockets inside the
// namespace.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.rest) }

// Clientset is a client with the admin's rights.
func (c *Cluster) Clientset() kubernetes.Interface { return c.clientset }

// Dir is the lab's temporary directory (certificates, kubeconfigs, logs);
// Close removes it.
func (c *Cluster) Dir() string { return c.dir }
