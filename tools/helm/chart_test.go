package helm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/mcs-api/config/crd"

	"github.com/fedmesh/fedmesh/federation/syncer/kubetest"
)

const (
	chartDir   = "fedmesh"
	testValues = "testdata/values.yaml"
	namespace  = "fedmesh-system"
)

// helm runs the pinned Helm v4 with args from this package's directory.
func helm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root, rerr := filepath.Abs("../..")
	if rerr != nil {
		t.Fatal(rerr)
	}
	cmd := exec.Command("go", append([]string{"tool", "-modfile=" + filepath.Join(root, "tools", "helmbin", "go.mod"), "helm"}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// render runs helm template with the test values plus extra flags.
func render(t *testing.T, extra ...string) (string, error) {
	t.Helper()
	args := append([]string{"template", "fedmesh", chartDir, "--namespace", namespace, "--kube-version", "1.37.2", "-f", testValues}, extra...)
	out, stderr, err := helm(t, args...)
	if err != nil {
		return "", fmt.Errorf("helm template: %w: %s", err, stderr)
	}
	return out, nil
}

// objects decodes a multi-document YAML stream.
func objects(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifest), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out
			}
			t.Fatalf("decode rendered manifest: %v", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string, into any) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, into); err != nil {
				t.Fatalf("convert %s %s: %v", kind, name, err)
			}
			return
		}
	}
	t.Fatalf("no %s %s rendered", kind, name)
}

func TestLintIsClean(t *testing.T) {
	out, stderr, err := helm(t, "lint", "--strict", chartDir, "-f", testValues, "--kube-version", "1.37.2")
	if err != nil {
		t.Fatalf("helm lint --strict: %v\n%s%s", err, out, stderr)
	}
	for _, bad := range []string{"[WARNING]", "[ERROR]"} {
		if strings.Contains(out, bad) {
			t.Errorf("helm lint reports %s:\n%s", bad, out)
		}
	}
}

func TestTemplateRefusesMissingOrBadRequiredValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"no cluster name", []string{"--set", "clusterName="}, "value clusterName is required"},
		{"cluster name not a DNS label", []string{"--set", "clusterName=Cluster_A"}, `value clusterName "Cluster_A"`},
		{"no control-plane address", []string{"--set", "controlPlane.addresses=null"}, "value controlPlane.addresses is required"},
		{"address without port", []string{"--set", "controlPlane.addresses={198.18.0.10}"}, `value controlPlane.addresses: "198.18.0.10" is not host:port`},
		{"no CA", []string{"--set", "controlPlane.caCert="}, "value controlPlane.caCert is required"},
		{"CA not PEM", []string{"--set", "controlPlane.caCert=ca.crt"}, "value controlPlane.caCert: not a PEM certificate"},
		{"no syncer token", []string{"--set", "syncer.joinToken="}, "value syncer.joinToken is required"},
		{"no agent tokens", []string{"--set", "agent.joinTokens=null"}, "value agent.joinTokens is required"},
		{"no registry", []string{"--set", "image.registry="}, "value image.registry is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, tc.set...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template %v: err = %v, want a failure saying %q", tc.set, err, tc.want)
			}
		})
	}
	t.Run("existing Secrets and ConfigMap replace the inline values", func(t *testing.T) {
		out, err := render(t, "--set", "controlPlane.caCert=", "--set", "controlPlane.caConfigMap=fed-ca",
			"--set", "syncer.joinToken=", "--set", "syncer.joinTokenSecret=syncer-tok",
			"--set", "agent.joinTokens=null", "--set", "agent.joinTokenSecret=agent-tok")
		if err != nil {
			t.Fatal(err)
		}
		objs := objects(t, out)
		for _, o := range objs {
			if o.GetKind() == "Secret" || o.GetKind() == "ConfigMap" {
				t.Errorf("rendered %s %s although an existing one is named", o.GetKind(), o.GetName())
			}
		}
		var ds appsv1.DaemonSet
		find(t, objs, "DaemonSet", "fedmesh-agent", &ds)
		if got := volume(ds.Spec.Template.Spec, "join").Secret.SecretName; got != "agent-tok" {
			t.Errorf("agent join tokens from Secret %q, want agent-tok", got)
		}
		if got := volume(ds.Spec.Template.Spec, "ca").ConfigMap.Name; got != "fed-ca" {
			t.Errorf("agent CA from ConfigMap %q, want fed-ca", got)
		}
	})
}

func volume(spec corev1.PodSpec, name string) corev1.Volume {
	for _, v := range spec.Volumes {
		if v.Name == name {
			return v
		}
	}
	return corev1.Volume{}
}

// TestSyncerRBACIsExactlyWhatItUses pins the syncer's ClusterRole to the
// calls the syncer makes (federation/syncer): a verb added here must be one
// the syncer needs, and one the syncer starts using must be added.
func TestSyncerRBACIsExactlyWhatItUses(t *testing.T) {
	out, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	find(t, objects(t, out), "ClusterRole", "fedmesh-syncer", &role)
	got := map[string][]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				k := g + "/" + res
				got[k] = append(got[k], r.Verbs...)
			}
		}
	}
	want := map[string][]string{
		"/pods":                             {"list", "watch"},
		"/namespaces":                       {"list", "watch"},
		"networking.k8s.io/networkpolicies": {"list", "watch"},
		"policy.networking.k8s.io/clusternetworkpolicies": {"list", "watch"},
		"multicluster.x-k8s.io/serviceexports":            {"get", "list", "watch"},
		"multicluster.x-k8s.io/serviceexports/status":     {"update"},
		"multicluster.x-k8s.io/serviceimports":            {"list", "create", "update", "delete"},
		"multicluster.x-k8s.io/serviceimports/status":     {"update"},
		"/services":                       {"list", "watch", "create", "update", "delete"},
		"discovery.k8s.io/endpointslices": {"list", "watch", "create", "update", "delete"},
		"/events":                         {"create", "patch"},
	}
	for k, v := range want {
		g := slices.Sorted(slices.Values(got[k]))
		w := slices.Sorted(slices.Values(v))
		if !slices.Equal(g, w) {
			t.Errorf("syncer may %v on %s, want exactly %v", g, k, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("syncer has access to %s (%v), which it does not use", k, got[k])
		}
	}
}

// The syncer may get exactly the Secrets listed as BGP password Secrets,
// each in its namespace by name, and no other Secret (the ClusterRole
// grants none: TestSyncerRBACIsExactlyWhatItUses).
func TestSyncerGetsOnlyTheListedBGPPasswordSecrets(t *testing.T) {
	out, err := render(t, "--set", "syncer.bgpPasswordSecrets[0].namespace=kube-system", "--set", "syncer.bgpPasswordSecrets[0].name=bgp-tor")
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, out)
	var role rbacv1.Role
	find(t, objs, "Role", "fedmesh-syncer-bgp-bgp-tor", &role)
	if role.Namespace != "kube-system" || len(role.Rules) != 1 {
		t.Fatalf("role %+v", role)
	}
	r := role.Rules[0]
	if !slices.Equal(r.Resources, []string{"secrets"}) || !slices.Equal(r.Verbs, []string{"get"}) || !slices.Equal(r.ResourceNames, []string{"bgp-tor"}) {
		t.Errorf("rule %+v: want get on secrets/bgp-tor only", r)
	}
	var rb rbacv1.RoleBinding
	find(t, objs, "RoleBinding", "fedmesh-syncer-bgp-bgp-tor", &rb)
	if rb.RoleRef.Name != role.Name || len(rb.Subjects) != 1 || rb.Subjects[0].Name != "fedmesh-syncer" {
		t.Errorf("binding %+v", rb)
	}
	def, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objects(t, def) {
		if o.GetKind() == "Role" || o.GetKind() == "RoleBinding" {
			t.Errorf("default values render %s %s: no Secret access unless listed", o.GetKind(), o.GetName())
		}
	}
}

func TestAgentRunsWithBoundedPrivilegeAndMeansEnforcingWhenReady(t *testing.T) {
	out, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, out)
	var ds appsv1.DaemonSet
	find(t, objs, "DaemonSet", "fedmesh-agent", &ds)
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("agent not on the host network: it must guard the node's pod veths and run the node's BGP and WireGuard")
	}
	c := spec.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Fatalf("agent security context %+v: want privileged: false", sc)
	}
	caps := slices.Sorted(slices.Values(sc.Capabilities.Add))
	if want := []corev1.Capability{"BPF", "NET_ADMIN", "NET_BIND_SERVICE", "PERFMON", "SYS_ADMIN"}; !slices.Equal(caps, want) {
		t.Errorf("agent capabilities %v, want %v", caps, want)
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("agent drops %v, want ALL", sc.Capabilities.Drop)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Errorf("agent readiness probe %+v: want GET /readyz (ready = enforcing)", p)
	}
	if v := volume(spec, "bpffs"); v.HostPath == nil || v.HostPath.Path != "/sys/fs/bpf" {
		t.Errorf("bpffs volume %+v: want hostPath /sys/fs/bpf", v)
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--cluster=cluster-a", "--node=$(NODE_NAME)", "--bpf-pin-dir=/sys/fs/bpf/fedmesh/$(NODE_NAME)",
		"--join-token-file=/etc/fedmesh/join/$(NODE_NAME)", "--controlplane=198.18.0.10:9001,198.18.0.10:9002,198.18.0.10:9003",
		"--node-labels-from-node"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %s", args, want)
		}
	}
	if want := "fedmesh.local/fedmesh-agent:v0.0.0-test"; c.Image != want {
		t.Errorf("agent image %s, want %s", c.Image, want)
	}
	tolerated := false
	for _, tol := range spec.Tolerations {
		tolerated = tolerated || (tol.Operator == corev1.TolerationOpExists && tol.Key == "")
	}
	if !tolerated {
		t.Errorf("agent tolerations %+v: want every taint tolerated (policy is enforced wherever pods run)", spec.Tolerations)
	}

	var dep appsv1.Deployment
	find(t, objs, "Deployment", "fedmesh-syncer", &dep)
	psc := dep.Spec.Template.Spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("syncer pod security context %+v: want runAsNonRoot", psc)
	}
	for _, o := range objs {
		if ns := o.GetNamespace(); ns != "" && ns != namespace {
			t.Errorf("%s %s rendered into namespace %s, want the release's %s", o.GetKind(), o.GetName(), ns, namespace)
		}
	}
}

// TestChartCRDsAreTheSyncersCRDs: the chart installs the same MCS CRDs the
// syncer would install itself (sigs.k8s.io/mcs-api at the version in
// go.mod), byte for byte.
func TestChartCRDsAreTheSyncersCRDs(t *testing.T) {
	for file, want := range map[string][]byte{
		"multicluster.x-k8s.io_serviceexports.yaml": crd.ServiceExportCRD,
		"multicluster.x-k8s.io_serviceimports.yaml": crd.ServiceImportCRD,
		// Not installed by the syncer; the same copy the test apiservers
		// serve (its provenance: federation/syncer/kubetest/crds.go).
		"policy.networking.k8s.io_clusternetworkpolicies.yaml": kubetest.ClusterNetworkPolicyCRD,
	} {
		got, err := os.ReadFile(filepath.Join(chartDir, "crds", file))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from sigs.k8s.io/mcs-api's; copy it from the module at the version go.mod requires", file)
		}
	}
}

// TestEveryRenderedObjectPassesServerSideDryRun sends every object the
// chart renders (CRDs included) to a real kube-apiserver as a server-side
// apply with dryRun=All: schema, defaults, validation and admission, as a
// real install would meet them. The CRDs are then created for real, so the
// objects that depend on them are checked against them.
func TestEveryRenderedObjectPassesServerSideDryRun(t *testing.T) {
	out, err := render(t, "--include-crds")
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, out)
	// Without kubetest's own copy of the ClusterNetworkPolicy CRD: the
	// chart's must install it.
	kube := kubetest.Start(t, kubetest.Options{NoClusterNetworkPolicyCRD: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := kube.CreateNamespace(ctx, namespace, nil); err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(kube.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))
	apply := func(o *unstructured.Unstructured, dryRun bool) error {
		gvk := o.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("map %s: %w", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
		}
		opts := metav1.ApplyOptions{FieldManager: "fedmesh-chart-test", Force: true}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err = ri.Apply(ctx, o.GetName(), o, opts)
		return err
	}
	kinds := map[string]int{}
	var crds []*unstructured.Unstructured
	for _, o := range objs {
		kinds[o.GetKind()]++
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o)
		}
	}
	for _, want := range []string{"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "DaemonSet", "Secret", "ConfigMap"} {
		if kinds[want] == 0 {
			t.Errorf("chart rendered no %s (rendered %v)", want, kinds)
		}
	}
	for _, o := range crds {
		if err := apply(o, true); err != nil {
			t.Errorf("dry-run %s %s: %v", o.GetKind(), o.GetName(), err)
		}
		if err := apply(o, false); err != nil {
			t.Fatalf("create %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	// The CRDs' resources must be served before objects can use them.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mapper.Reset()
		if _, err := mapper.RESTMapping(schema.GroupKind{Group: "multicluster.x-k8s.io", Kind: "ServiceImport"}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the MCS CRDs are not served 30s after their creation")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			continue
		}
		if err := apply(o, true); err != nil {
			t.Errorf("dry-run %s %s/%s: %v", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	// Dry-run created nothing.
	if _, err := kube.Clientset().AppsV1().DaemonSets(namespace).Get(ctx, "fedmesh-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after dry-run, DaemonSet fedmesh-agent: err = %v, want NotFound", err)
	}
}

// TestAgentServiceTranslationAndDNSAreOptIn: by default the agent neither
// translates ClusterSetIPs nor mounts the host's cgroup tree; with
// agent.services.cgroup it mounts /sys/fs/cgroup read-only and attaches
// there, and agent.dns.* run the node-local resolver.
func TestAgentServiceTranslationAndDNSAreOptIn(t *testing.T) {
	agentOf := func(out string) appsv1.DaemonSet {
		var ds appsv1.DaemonSet
		find(t, objects(t, out), "DaemonSet", "fedmesh-agent", &ds)
		return ds
	}
	out, err := render(t)
	if err != nil {
		t.Fatal(err)
	}
	ds := agentOf(out)
	if args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " "); strings.Contains(args, "--service-cgroup") || strings.Contains(args, "--dns-listen") ||
		strings.Contains(args, "--dns-redirect") {
		t.Errorf("default agent args %q translate services or serve DNS", args)
	}
	if v := volume(ds.Spec.Template.Spec, "host-cgroup"); v.HostPath != nil {
		t.Errorf("default agent mounts the host cgroup tree: %+v", v)
	}
	out, err = render(t, "--set", "agent.services.cgroup=/sys/fs/cgroup/kubepods.slice", "--set", "agent.dns.listen=169.254.20.10:53",
		"--set", "agent.dns.upstream=10.96.0.10:53", "--set", "agent.dns.redirect={10.96.0.10,10.96.0.11}")
	if err != nil {
		t.Fatal(err)
	}
	ds = agentOf(out)
	args := strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
	for _, want := range []string{"--service-cgroup=/host-cgroup/kubepods.slice", "--dns-listen=169.254.20.10:53", "--dns-upstream=10.96.0.10:53",
		"--dns-redirect=10.96.0.10,10.96.0.11"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %s", args, want)
		}
	}
	if v := volume(ds.Spec.Template.Spec, "host-cgroup"); v.HostPath == nil || v.HostPath.Path != "/sys/fs/cgroup" {
		t.Errorf("host-cgroup volume %+v: want hostPath /sys/fs/cgroup", v)
	}

	// Dual stack: a resolver address per family, as a list or as one
	// comma-separated string, and both families' cluster DNS redirected.
	const dual = "--dns-listen=169.254.20.10:53,[fd00:169:254::10]:53"
	for _, listen := range [][]string{
		{"--set", "agent.dns.listen={169.254.20.10:53,[fd00:169:254::10]:53}"},
		{"--set-string", `agent.dns.listen=169.254.20.10:53\,[fd00:169:254::10]:53`},
	} {
		out, err = render(t, append(listen, "--set", "agent.services.cgroup=/sys/fs/cgroup",
			"--set", "agent.dns.redirect={10.96.0.10,fd00:10:96::a}")...)
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(agentOf(out).Spec.Template.Spec.Containers[0].Args, " ")
		for _, want := range []string{dual, "--dns-redirect=10.96.0.10,fd00:10:96::a"} {
			if !strings.Contains(args, want) {
				t.Errorf("with %s: agent args %q lack %s", listen[1], args, want)
			}
		}
	}
}

func TestAgentIPCacheSizeIsPassedOnlyWhenSet(t *testing.T) {
	args := func(setArgs ...string) string {
		t.Helper()
		out, err := render(t, setArgs...)
		if err != nil {
			t.Fatal(err)
		}
		var ds appsv1.DaemonSet
		find(t, objects(t, out), "DaemonSet", "fedmesh-agent", &ds)
		return strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " ")
	}
	if a := args(); strings.Contains(a, "--ipcache-max-entries") {
		t.Errorf("default agent args %q set the ipcache size (the agent's default should apply)", a)
	}
	// 4194304 is what 3M endpoints need. From a values file (here JSON) the
	// number is a float, which must not render in exponent form.
	if a := args("--set-json", "agent.ipcacheMaxEntries=4194304"); !strings.Contains(a, "--ipcache-max-entries=4194304 ") {
		t.Errorf("agent args %q lack --ipcache-max-entries=4194304", a)
	}
}

// helm uninstall runs a Job per node: the looked-up nodes and those
// agent.uninstallNodes lists (once each), and with the node-local DNS
// resolver on, in the node's network namespace with NET_ADMIN and the
// listen addresses, so the agent's DNS link and addresses go too.
func TestUninstallJobsCoverListedNodesAndTheNodeLocalDNS(t *testing.T) {
	for _, tc := range []struct {
		name    string
		set     []string
		wantDNS string // the --dns-listen argument, "" for none
	}{
		{"no resolver", nil, ""},
		{"one address", []string{"--set", "agent.dns.listen=169.254.20.10:53"}, "--dns-listen=169.254.20.10:53"},
		{"both families", []string{"--set-json", `agent.dns.listen=["169.254.20.10:53","[fd00:169:254::10]:53"]`},
			"--dns-listen=169.254.20.10:53,[fd00:169:254::10]:53"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, append([]string{"--set", "agent.uninstallNodes={n1,n2,n1}"}, tc.set...)...)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, out)
			nodes := map[string]bool{}
			for i := range 2 {
				var job batchv1.Job
				find(t, objs, "Job", fmt.Sprintf("fedmesh-agent-uninstall-%d", i), &job)
				spec := job.Spec.Template.Spec
				nodes[spec.NodeName] = true
				args := strings.Join(spec.Containers[0].Args, " ")
				if !strings.Contains(args, "--uninstall") || !strings.Contains(args, "--bpf-pin-dir=/sys/fs/bpf/fedmesh/"+spec.NodeName) {
					t.Errorf("job %d args %q: want --uninstall of its node's pins", i, args)
				}
				caps := spec.Containers[0].SecurityContext.Capabilities
				netAdmin := caps != nil && slices.Contains(caps.Add, corev1.Capability("NET_ADMIN"))
				if tc.wantDNS == "" {
					if spec.HostNetwork || netAdmin || strings.Contains(args, "--dns-listen") {
						t.Errorf("job %d without a resolver: hostNetwork %v, NET_ADMIN %v, args %q; want none of them", i, spec.HostNetwork, netAdmin, args)
					}
					continue
				}
				if !spec.HostNetwork || !netAdmin || !slices.Contains(spec.Containers[0].Args, tc.wantDNS) {
					t.Errorf("job %d: hostNetwork %v, NET_ADMIN %v, args %q; want the node's netns, NET_ADMIN and %s", i, spec.HostNetwork, netAdmin, args, tc.wantDNS)
				}
			}
			if !nodes["n1"] || !nodes["n2"] {
				t.Errorf("uninstall jobs on %v, want n1 and n2", nodes)
			}
			for _, o := range objs {
				if o.GetName() == "fedmesh-agent-uninstall-2" {
					t.Error("n1, listed twice, got two uninstall jobs")
				}
			}
		})
	}
}
