// Command floor-extender is the least work a kube-scheduler extender can do, for bench/e2e_throughput.py
// --floor: filter answers one of the candidate names (chosen by a hash of the pod's name), bind posts
// the pod's Binding to the API server as JSON. No ledger, no assignment, no watch. What a pod costs the machine
// with it is the cost of the extender protocol itself (kube-scheduler's two HTTP calls, a Binding from outside
// kube-scheduler): the ceiling of the ratio any extender can reach on that machine. docs/e2e.md has the figures.
//
//	floor-extender LISTEN_ADDR API_URL CA_FILE CLIENT_CERT CLIENT_KEY
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
)

type filterArgs struct {
	Pod struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec map[string]any `json:"spec"` // decoded like an extender that reads the pod would
	}
	NodeNames []string
}

type bindArgs struct {
	PodName, PodNamespace, PodUID, Node string
}

func main() {
	if len(os.Args) != 6 {
		log.Fatal("usage: floor-extender LISTEN_ADDR API_URL CA_FILE CLIENT_CERT CLIENT_KEY")
	}
	listen, api := os.Args[1], os.Args[2]
	cert, err := tls.LoadX509KeyPair(os.Args[4], os.Args[5])
	if err != nil {
		log.Fatal(err)
	}
	ca, err := os.ReadFile(os.Args[3])
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		log.Fatalf("no certificate in %s", os.Args[3])
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		MaxIdleConnsPerHost: 64,
		ForceAttemptHTTP2:   true,
	}}

	http.HandleFunc("/filter", func(w http.ResponseWriter, r *http.Request) {
		var a filterArgs
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		names := []string{}
		if len(a.NodeNames) > 0 {
			h := fnv.New32a()
			h.Write([]byte(a.Pod.Metadata.Name))
			names = append(names, a.NodeNames[int(h.Sum32()%uint32(len(a.NodeNames)))])
		}
		writeJSON(w, map[string]any{"NodeNames": names})
	})

	http.HandleFunc("/bind", func(w http.ResponseWriter, r *http.Request) {
		var b bindArgs
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body, _ := json.Marshal(map[string]any{
			"apiVersion": "v1",
			"kind":       "Binding",
			"metadata":   map[string]any{"name": b.PodName, "uid": b.PodUID},
			"target":     map[string]any{"apiVersion": "v1", "kind": "Node", "name": b.Node},
		})
		target := fmt.Sprintf("%s/api/v1/namespaces/%s/pods/%s/binding", api,
			url.PathEscape(b.PodNamespace), url.PathEscape(b.PodName))
		msg := ""
		resp, err := client.Post(target, "application/json", bytes.NewReader(body))
		if err != nil {
			msg = err.Error()
		} else {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 300 {
				msg = fmt.Sprintf("binding %s/%s: HTTP %d: %s", b.PodNamespace, b.PodName, resp.StatusCode, data)
			}
		}
		writeJSON(w, map[string]string{"Error": msg})
	})

	log.Fatal(http.ListenAndServe(listen, nil))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.Print(err)
	}
}
