package main

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"time"
)

type job struct {
	index    int
	due      time.Time // scheduled send time
	measured bool
}

// senderStats belongs to one sender goroutine; merged after all of them end.
type senderStats struct {
	postNs     []int64
	lagNs      []int64
	acceptedAt []int64 // unix ns of the actual send of each accepted measured message
	status     map[string]int
	errors     int
	apiErrors  int
	warmOK     int
}

// pace queues count jobs from first on, open-loop: job i is due at start + i/rate whatever the answers do.
func pace(jobs chan<- job, start time.Time, first, count int, rate float64, measured bool) {
	for i := 0; i < count; i++ {
		due := start.Add(time.Duration(float64(i) / rate * 1e9))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		jobs <- job{first + i, due, measured}
	}
}

func (r *run) newClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: r.cfg.senders, MaxIdleConnsPerHost: r.cfg.senders, MaxConnsPerHost: r.cfg.senders,
			DisableCompression: true, IdleConnTimeout: 90 * time.Second,
		},
	}
}

// sender posts jobs until the channel closes; the text carries the actual send time for the receivers.
func (r *run) sender(jobs <-chan job, st *senderStats, wg *sync.WaitGroup) {
	defer wg.Done()
	var body, reply bytes.Buffer
	url := r.cfg.base + "/v1/session/message"
	if r.cfg.target == "centrifugo" {
		url = r.cfg.base + "/api/publish"
	}
	for j := range jobs {
		session := r.sessions[j.index%len(r.sessions)]
		sent := time.Now()
		text := strconv.Itoa(j.index) + " " + strconv.FormatInt(sent.UnixNano(), 10)
		body.Reset()
		if r.cfg.target == "soma" {
			body.WriteString(`{"session_id":"` + session + `","message":"` + text + `"}`)
		} else {
			body.WriteString(`{"channel":"` + session + `","data":{"message":"` + text + `"}}`)
		}
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body.Bytes()))
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.client.Do(req)
		ok := false
		if err == nil {
			reply.Reset()
			_, err = reply.ReadFrom(resp.Body)
			resp.Body.Close()
		}
		elapsed := time.Since(sent)
		if j.measured {
			st.lagNs = append(st.lagNs, int64(sent.Sub(j.due)))
		}
		if err != nil {
			if j.measured {
				st.errors++
			}
			continue
		}
		if r.cfg.target == "soma" {
			ok = resp.StatusCode == http.StatusAccepted
		} else if resp.StatusCode == http.StatusOK {
			hasError := false
			fields(reply.Bytes(), func(k, _ []byte) { hasError = hasError || string(k) == "error" })
			ok = !hasError
			if hasError && j.measured {
				st.apiErrors++
			}
		}
		if !j.measured {
			if ok {
				st.warmOK++
			}
			continue
		}
		st.status[strconv.Itoa(resp.StatusCode)]++
		st.postNs = append(st.postNs, int64(elapsed))
		if ok {
			st.acceptedAt = append(st.acceptedAt, sent.UnixNano())
		}
	}
}

// send runs count jobs from first on through a pool of senders, returning the merged per-sender stats.
func (r *run) send(start time.Time, first, count int, measured bool) []*senderStats {
	jobs := make(chan job, 4096)
	stats := make([]*senderStats, r.cfg.senders)
	var wg sync.WaitGroup
	for i := range stats {
		stats[i] = &senderStats{status: map[string]int{}}
		wg.Add(1)
		go r.sender(jobs, stats[i], &wg)
	}
	pace(jobs, start, first, count, r.cfg.rate, measured)
	close(jobs)
	wg.Wait()
	return stats
}
