package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"time"
)

// An agent run as a DaemonSet pod (the Helm chart) has one command line for
// every node, so it cannot be given each node's pod CIDR: with
// --pod-cidr-from-node it reads them from its own Node object, where the
// cluster's IPAM (kube-controller-manager --allocate-node-cidrs, or the
// installer) put them. Plain HTTP with the pod's service account: the agent
// needs one GET, not a client library.

// In-cluster service account files, as the kubelet mounts them.
const (
	saTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	saCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// errNoPodCIDR is a Node without spec.podCIDRs yet: the IPAM has not got to
// it, so the caller waits.
var errNoPodCIDR = errors.New("the Node has no spec.podCIDRs yet")

// nodeAPI reads Node objects from the cluster's API server.
type nodeAPI struct {
	base   string // https://host:port
	token  string
	client *http.Client
}

// inClusterNodeAPI is the API server the pod's environment names, with the
// pod's service account.
func inClusterNodeAPI() (*nodeAPI, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("--pod-cidr-from-node and --node-labels-from-node need the Kubernetes API of a pod (KUBERNETES_SERVICE_HOST/PORT are unset): run the agent as a pod, or give --pod-cidr and --node-label")
	}
	token, err := os.ReadFile(saTokenFile)
	if err != nil {
		return nil, fmt.Errorf("read the service account token for reading the Node: %w (automountServiceAccountToken must be on)", err)
	}
	pem, err := os.ReadFile(saCAFile)
	if err != nil {
		return nil, fmt.Errorf("read the cluster CA for reading the Node: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read the cluster CA for reading the Node: no certificate in %s", saCAFile)
	}
	return &nodeAPI{
		base:   "https://" + net.JoinHostPort(host, port),
		token:  string(token),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}},
	}, nil
}

// nodeLabels returns metadata.labels of the Node called node: with
// --node-labels-from-node, the labels BGP peers select nodes by (rack,
// topology.kubernetes.io/zone) are the ones the cluster already keeps on
// its Node objects, as Calico's BGPPeer nodeSelector reads them.
func (a *nodeAPI) nodeLabels(ctx context.Context, node string) (map[string]string, error) {
	var n struct {
		Metadata struct {
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
	}
	if err := a.getNode(ctx, node, &n); err != nil {
		return nil, err
	}
	return n.Metadata.Labels, nil
}

// getNode decodes the Node called node into v.
func (a *nodeAPI) getNode(ctx context.Context, node string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/api/v1/nodes/"+url.PathEscape(node), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("get Node %s: %w", node, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get Node %s: %s (the agent's service account needs get on nodes)", node, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode Node %s: %w", node, err)
	}
	return nil
}

// podCIDRs returns spec.podCIDRs of the Node called node (spec.podCIDR on
// an API server that sets only that), masked.
func (a *nodeAPI) podCIDRs(ctx context.Context, node string) ([]string, error) {
	var n struct {
		Spec struct {
			PodCIDR  string   `json:"podCIDR"`
			PodCIDRs []string `json:"podCIDRs"`
		} `json:"spec"`
	}
	if err := a.getNode(ctx, node, &n); err != nil {
		return nil, err
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("node %s: %w", node, errNoPodCIDR)
	}
	out := make([]string, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, fmt.Errorf("node %s: spec.podCIDRs %q: %w", node, c, err)
		}
		out = append(out, p.Masked().String())
	}
	return out, nil
}

// waitPodCIDRs polls until the Node has pod CIDRs, ctx ends, or the API
// refuses for a reason waiting will not fix.
func (a *nodeAPI) waitPodCIDRs(ctx context.Context, node string, every time.Duration, log *slog.Logger) ([]string, error) {
	for {
		cidrs, err := a.podCIDRs(ctx, node)
		if err == nil {
			return cidrs, nil
		}
		log.Warn("waiting for the node's pod CIDRs", "node", node, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read pod CIDRs of node %s: %w (last: %v)", node, ctx.Err(), err)
		case <-time.After(every):
		}
	}
}

// mergeLabels is the Node's labels with the --node-label entries over them.
func mergeLabels(fromNode, flags map[string]string) map[string]string {
	out := make(map[string]string, len(fromNode)+len(flags))
	maps.Copy(out, fromNode)
	maps.Copy(out, flags)
	return out
}
