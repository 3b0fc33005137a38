// Command loadgen drives one workload against the soma service or Centrifugo with the same client-side
// method: paced open-loop HTTP publishes, websocket viewers checking order and measuring delivery latency.
// It prints one JSON object on stdout; diagnostics go to stderr.
package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"regexp"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type config struct {
	target, base, prefix                  string
	sessions, viewersPer, warmup, senders int
	rate, duration, drain, readyTimeout   float64
	cpuProfile                            string
	pollers                               int
}

type run struct {
	cfg                       config
	sessions                  []string
	viewers                   []*viewer
	client                    *http.Client
	epfd                      int
	readers                   sync.WaitGroup
	stopping                  atomic.Bool
	closed, warmed, delivered atomic.Int64
}

type point struct {
	T         int     `json:"t"`
	Delivered int     `json:"delivered"`
	Accepted  int     `json:"accepted"`
	P99       float64 `json:"p99_ms"`
}

type result struct {
	Target             string             `json:"target"`
	Sessions           int                `json:"sessions"`
	Viewers            int                `json:"viewers"`
	ViewersTotal       int                `json:"viewers_total"`
	Rate               float64            `json:"rate"`
	Duration           float64            `json:"duration"`
	Offered            int                `json:"offered"`
	Accepted           int                `json:"accepted"`
	Status             map[string]int     `json:"status"`
	Errors             int                `json:"errors"`
	Refused            int                `json:"refused"`
	APIErrors          int                `json:"api_errors"`
	PostMs             map[string]float64 `json:"post_ms"`
	Deliveries         int64              `json:"deliveries"`
	ExpectedDeliveries int64              `json:"expected_deliveries"`
	DeliveryMs         map[string]float64 `json:"delivery_ms"`
	Gaps               int64              `json:"gaps"`
	Missing            int64              `json:"missing"`
	Dups               int64              `json:"dups"`
	OtherFrames        int64              `json:"other_frames"`
	ViewersClosed      int                `json:"viewers_closed"`
	CloseCodes         map[string]int     `json:"close_codes"`
	SendLagMs          map[string]float64 `json:"send_lag_ms"`
	SendSeconds        float64            `json:"send_s"`
	DrainSeconds       float64            `json:"drain_s"`
	DeliveriesPerS     float64            `json:"deliveries_per_s"`
	Timeline           []point            `json:"timeline"`
}

var sessionPrefix = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$`)

func parseFlags() (config, error) {
	var c config
	flag.StringVar(&c.target, "target", "soma", "soma or centrifugo")
	flag.StringVar(&c.base, "base", "", "HTTP base of the target, e.g. http://127.0.0.1:8000")
	flag.StringVar(&c.prefix, "prefix", "", "session/channel id prefix (default random)")
	flag.IntVar(&c.sessions, "sessions", 1, "number of sessions (channels)")
	flag.IntVar(&c.viewersPer, "viewers-per-session", 1, "websocket viewers per session")
	flag.Float64Var(&c.rate, "rate", 100, "messages per second offered in total, round-robin over sessions")
	flag.Float64Var(&c.duration, "duration", 10, "seconds of measured sending")
	flag.Float64Var(&c.drain, "drain", 10, "seconds to wait for deliveries after sending")
	flag.IntVar(&c.warmup, "warmup", -1, "messages sent and awaited before measuring (default 2*sessions)")
	flag.IntVar(&c.senders, "senders", 256, "concurrent HTTP senders (bounds in-flight publishes)")
	flag.Float64Var(&c.readyTimeout, "ready-timeout", 60, "seconds allowed for connecting viewers and for the warm-up")
	flag.StringVar(&c.cpuProfile, "cpuprofile", "", "write a Go CPU profile of the generator to this file")
	flag.IntVar(&c.pollers, "pollers", 1, "goroutines reading the websockets (one epoll set)")
	flag.Parse()
	if c.warmup < 0 {
		c.warmup = 2 * c.sessions
	}
	if c.prefix == "" {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		c.prefix = "lg" + hex.EncodeToString(b)
	}
	switch {
	case c.target != "soma" && c.target != "centrifugo":
		return c, fmt.Errorf("-target must be soma or centrifugo, not %q", c.target)
	case !strings.HasPrefix(c.base, "http://"):
		return c, errors.New("-base must be an http:// URL (sockets are read raw: no TLS)")
	case c.sessions < 1 || c.viewersPer < 1 || c.senders < 1 || c.pollers < 1:
		return c, errors.New("-sessions, -viewers-per-session, -senders and -pollers must be at least 1")
	case c.rate <= 0 || c.duration <= 0 || c.drain < 0:
		return c, errors.New("-rate and -duration must be positive, -drain not negative")
	case !sessionPrefix.MatchString(c.prefix):
		return c, fmt.Errorf("-prefix %q: use letters, digits, '.', '_' or '-'", c.prefix)
	}
	return c, nil
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func ms(ns int64) float64 { return math.Round(float64(ns)/1e3) / 1e3 }

// quantiles of sorted nanosecond samples, in milliseconds, under the given names (p50 ... p999, max).
func quantiles(sorted []int64, names ...string) map[string]float64 {
	out := make(map[string]float64, len(names))
	for _, name := range names {
		if len(sorted) == 0 {
			out[name] = 0
			continue
		}
		if name == "max" {
			out[name] = ms(sorted[len(sorted)-1])
			continue
		}
		q, _ := strconv.ParseFloat("0."+name[1:], 64)
		i := int(math.Ceil(q*float64(len(sorted)))) - 1
		out[name] = ms(sorted[max(i, 0)])
	}
	return out
}

func execute(cfg config) (*result, error) {
	debug.SetGCPercent(400) // the latency store is large and long-lived: fewer GC cycles, less CPU
	r := &run{cfg: cfg}
	for i := 0; i < cfg.sessions; i++ {
		r.sessions = append(r.sessions, cfg.prefix+"-"+strconv.Itoa(i))
	}
	perViewer := int(cfg.rate*cfg.duration/float64(cfg.sessions)*1.1) + 16
	for s := range r.sessions {
		for k := 0; k < cfg.viewersPer; k++ {
			r.viewers = append(r.viewers, &viewer{run: r, session: s, ready: make(chan struct{}),
				samples: make([]sample, 0, perViewer)})
		}
	}
	r.client = r.newClient()
	var err error
	if r.epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err != nil {
		return nil, err
	}
	for range cfg.pollers {
		r.readers.Add(1)
		go r.poll()
	}
	began := time.Now()
	if err := r.connectAll(seconds(cfg.readyTimeout)); err != nil {
		return nil, err
	}
	logf("%d viewers on %d sessions ready in %.1f s", len(r.viewers), cfg.sessions, time.Since(began).Seconds())

	if cfg.warmup > 0 {
		warmOK := 0
		for _, st := range r.send(time.Now(), 0, cfg.warmup, false) {
			warmOK += st.warmOK
		}
		if warmOK == 0 {
			return nil, fmt.Errorf("none of %d warm-up messages was accepted", cfg.warmup)
		}
		want := int64(warmOK * cfg.viewersPer)
		if !waitFor(seconds(cfg.readyTimeout), func() bool { return r.warmed.Load() >= want }) {
			return nil, fmt.Errorf("warm-up: %d of %d deliveries within %.0f s", r.warmed.Load(), want, cfg.readyTimeout)
		}
		logf("warm-up: %d of %d messages accepted, all delivered", warmOK, cfg.warmup)
	}

	offered := int(math.Round(cfg.rate * cfg.duration))
	start := time.Now()
	stats := r.send(start, cfg.warmup, offered, true)
	sendSeconds := time.Since(start).Seconds()
	accepted := 0
	for _, st := range stats {
		accepted += len(st.acceptedAt)
	}
	expected := int64(accepted * cfg.viewersPer)
	logf("sent %d in %.1f s, %d accepted; draining", offered, sendSeconds, accepted)
	drainStart := time.Now()
	waitFor(seconds(cfg.drain), func() bool {
		return r.delivered.Load() >= expected || r.closed.Load() >= int64(len(r.viewers))
	})
	drainSeconds := time.Since(drainStart).Seconds()
	r.stopping.Store(true)
	r.readers.Wait()
	for _, v := range r.viewers {
		if !v.sock.dead {
			syscall.Close(v.sock.fd)
		}
	}
	return r.summarise(start, offered, accepted, expected, stats, sendSeconds, drainSeconds), nil
}

func (r *run) summarise(start time.Time, offered, accepted int, expected int64, stats []*senderStats,
	sendSeconds, drainSeconds float64) *result {
	cfg := r.cfg
	res := &result{Target: cfg.target, Sessions: cfg.sessions, Viewers: cfg.viewersPer, ViewersTotal: len(r.viewers),
		Rate: cfg.rate, Duration: cfg.duration, Offered: offered, Accepted: accepted, Status: map[string]int{},
		ExpectedDeliveries: expected, CloseCodes: map[string]int{}, SendSeconds: math.Round(sendSeconds*1e3) / 1e3,
		DrainSeconds: math.Round(drainSeconds*1e3) / 1e3}
	var post, lag []int64
	bucket := func(at int64) int { return int(max(at-start.UnixNano(), 0) / int64(time.Second)) }
	buckets := int(math.Ceil(sendSeconds + drainSeconds))
	perSecond := make([][]int64, buckets+1)
	acceptedPerSecond := make([]int, buckets+1)
	for _, st := range stats {
		post = append(post, st.postNs...)
		lag = append(lag, st.lagNs...)
		res.Errors += st.errors
		res.APIErrors += st.apiErrors
		for code, n := range st.status {
			res.Status[code] += n
			if code == "503" || code == "429" {
				res.Refused += n
			}
		}
		for _, at := range st.acceptedAt {
			acceptedPerSecond[min(bucket(at), buckets)]++
		}
	}
	var last int64
	total := 0
	for _, v := range r.viewers {
		total += len(v.samples)
	}
	latencies := make([]int64, 0, total)
	for _, v := range r.viewers {
		res.Gaps += v.gaps
		res.Missing += v.missing
		res.Dups += v.dups
		res.OtherFrames += v.other
		if v.closeCode != 0 {
			res.ViewersClosed++
			res.CloseCodes[strconv.Itoa(v.closeCode)]++
		}
		for _, s := range v.samples {
			latencies = append(latencies, s.latency)
			b := min(bucket(s.at), buckets)
			perSecond[b] = append(perSecond[b], s.latency)
			last = max(last, s.at)
		}
	}
	res.Deliveries = int64(len(latencies))
	slices.Sort(post)
	slices.Sort(lag)
	slices.Sort(latencies)
	res.PostMs = quantiles(post, "p50", "p90", "p99", "max")
	res.SendLagMs = quantiles(lag, "p99", "max")
	res.DeliveryMs = quantiles(latencies, "p50", "p90", "p99", "p999", "max")
	if span := float64(last-start.UnixNano()) / 1e9; len(latencies) > 0 && span > 0 {
		res.DeliveriesPerS = math.Round(float64(len(latencies))/span*10) / 10
	}
	// whole seconds of the run, then any later second that still saw deliveries (stragglers of the drain)
	shown := int(math.Ceil(cfg.duration))
	for t := range perSecond {
		if len(perSecond[t]) > 0 || acceptedPerSecond[t] > 0 {
			shown = max(shown, t+1)
		}
	}
	res.Timeline = []point{}
	for t := range min(shown, len(perSecond)) {
		slices.Sort(perSecond[t])
		res.Timeline = append(res.Timeline, point{t, len(perSecond[t]), acceptedPerSecond[t],
			quantiles(perSecond[t], "p99")["p99"]})
	}
	return res
}

func main() {
	cfg, err := parseFlags()
	if err == nil && cfg.cpuProfile != "" {
		var f *os.File
		if f, err = os.Create(cfg.cpuProfile); err == nil {
			err = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	if err == nil {
		var res *result
		if res, err = execute(cfg); err == nil {
			enc := json.NewEncoder(os.Stdout)
			err = enc.Encode(res)
		}
	}
	if err != nil {
		logf("%v", err)
		os.Exit(2)
	}
}
