// Command crpeer is bench/bench_runtime.py's controller-runtime peer: the same minimal controller
// as the Python children in bench/_runtime_child.py (for each BenchObject ensure one owned
// ConfigMap and set a Ready condition), built on sigs.k8s.io/controller-runtime, so the benchmark
// compares libraries, not controllers.
//
// It speaks the same protocol as the Python children: it touches <stats>.ready once its caches
// have synced, writes a stats snapshot (requests by HTTP method, reconciles, VmHWM/VmRSS) to
// --stats on SIGUSR1 and on exit, and exits on SIGTERM. Requests are counted on the client side,
// in the rest.Config's transport, as the Python children count aiohttp's requests.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

var benchGVK = schema.GroupVersionKind{Group: "bench.kaitopy.dev", Version: "v1", Kind: "BenchObject"}

// tally is what the process did, in the shape bench_runtime.py reads from every child.
type tally struct {
	mu         sync.Mutex
	requests   map[string]int
	reconciles atomic.Int64
}

func (t *tally) count(method string) {
	t.mu.Lock()
	t.requests[strings.ToUpper(method)]++
	t.mu.Unlock()
}

func (t *tally) dump(path string) error {
	t.mu.Lock()
	reqs := make(map[string]int, len(t.requests))
	writes := 0
	for m, n := range t.requests {
		reqs[m] = n
		if m == "POST" || m == "PUT" || m == "PATCH" || m == "DELETE" {
			writes += n
		}
	}
	t.mu.Unlock()
	status := procStatus()
	out, err := json.Marshal(map[string]any{
		"time":       float64(time.Now().UnixNano()) / 1e9,
		"requests":   reqs,
		"writes":     writes,
		"reconciles": t.reconciles.Load(),
		"vm_hwm_kib": status["VmHWM"],
		"vm_rss_kib": status["VmRSS"],
	})
	if err != nil {
		return err
	}
	// Written aside and renamed, so the parent never reads half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func procStatus() map[string]int {
	out := map[string]int{}
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(raw), "\n") {
		key, value, ok := strings.Cut(line, ":")
		fields := strings.Fields(value)
		if ok && len(fields) == 2 && fields[1] == "kB" {
			if n, err := strconv.Atoi(fields[0]); err == nil {
				out[key] = n
			}
		}
	}
	return out
}

// countingTransport tallies every request the process sends to the API server.
type countingTransport struct {
	next http.RoundTripper
	t    *tally
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.t.count(req.Method)
	return c.next.RoundTrip(req)
}

type reconciler struct {
	client client.Client
	t      *tally
}

func newBenchObject() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(benchGVK)
	return u
}

func readyCondition(generation int64) map[string]any {
	return map[string]any{
		"type":               "Ready",
		"status":             "True",
		"reason":             "ConfigMapEnsured",
		"message":            "",
		"observedGeneration": generation,
		"lastTransitionTime": time.Now().UTC().Format(time.RFC3339),
	}
}

func hasReady(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != "Ready" {
			continue
		}
		// JSON numbers decode as int64 in unstructured objects.
		g, _ := m["observedGeneration"].(int64)
		return m["status"] == "True" && g == obj.GetGeneration()
	}
	return false
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.t.reconciles.Add(1)
	obj := newBenchObject()
	if err := r.client.Get(ctx, req.NamespacedName, obj); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	data := map[string]string{}
	for _, key := range []string{"size", "image"} {
		v, _, _ := unstructured.NestedFieldNoCopy(obj.Object, "spec", key)
		if v == nil {
			v = ""
			if key == "size" {
				v = 0
			}
		}
		data[key] = fmt.Sprint(v)
	}
	current := &corev1.ConfigMap{}
	err := r.client.Get(ctx, req.NamespacedName, current)
	switch {
	case apierrors.IsNotFound(err):
		cm := &corev1.ConfigMap{}
		cm.Name, cm.Namespace = req.Name, req.Namespace
		cm.Labels = map[string]string{"bench": "runtime"}
		cm.Data = data
		if err := controllerutil.SetControllerReference(obj, cm, r.client.Scheme()); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.client.Create(ctx, cm); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, err
		}
	case err != nil:
		return ctrl.Result{}, err
	case current.Data["size"] != data["size"] || current.Data["image"] != data["image"]:
		current.Data = data
		if err := r.client.Update(ctx, current); err != nil {
			return ctrl.Result{}, err
		}
	}
	if !hasReady(obj) {
		patch, err := json.Marshal(map[string]any{
			"status": map[string]any{"conditions": []any{readyCondition(obj.GetGeneration())}},
		})
		if err != nil {
			return ctrl.Result{}, err
		}
		if err := r.client.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{}, nil
}

func main() {
	// A flag set of our own: controller-runtime registers --kubeconfig on the global one.
	flags := flag.NewFlagSet("crpeer", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "kubeconfig of the API server")
	namespace := flags.String("namespace", "", "the one namespace to watch")
	stats := flags.String("stats", "", "where SIGUSR1 and exit write the stats snapshot")
	workers := flags.Int("workers", 16, "MaxConcurrentReconciles (the Python peer's default is 16 too)")
	_ = flags.Parse(os.Args[1:])
	if err := run(*kubeconfig, *namespace, *stats, *workers); err != nil {
		fmt.Fprintln(os.Stderr, "crpeer:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace, stats string, workers int) error {
	ctrl.SetLogger(logr.Discard())
	t := &tally{requests: map[string]int{}}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	// No client-side rate limit: the Python peers have none either, so all meet the same server.
	cfg.QPS = -1
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return countingTransport{next: rt, t: t} })

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Cache: cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}},
		// Reads of unstructured objects go to the API server unless asked; a controller on an
		// unstructured kind asks, so its reconcile reads the cache as ours does.
		Client:                 client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return err
	}
	r := &reconciler{client: mgr.GetClient(), t: t}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("bench").
		For(newBenchObject(), builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// The creation of a ConfigMap we just created carries no news; changes and deletions do.
		Owns(&corev1.ConfigMap{}, builder.WithPredicates(predicate.Funcs{
			CreateFunc: func(event.CreateEvent) bool { return false },
		})).
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		Complete(r)
	if err != nil {
		return err
	}
	// The ready marker: both informers exist and have synced (GetInformer blocks until then).
	err = mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for _, obj := range []client.Object{newBenchObject(), &corev1.ConfigMap{}} {
			if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
				return err
			}
		}
		if err := os.WriteFile(stats+".ready", nil, 0o644); err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}))
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			if err := t.dump(stats); err != nil {
				fmt.Fprintln(os.Stderr, "crpeer: stats:", err)
			}
		}
	}()
	if err := mgr.Start(ctx); err != nil {
		return err
	}
	return t.dump(stats)
}
