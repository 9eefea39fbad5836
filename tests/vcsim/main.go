// A small vCenter simulator for guestfence's fence_vmware_soap tests and benchmark.
//
// It serves govmomi's simulator VPX model (one datacenter, one standalone host, one
// cluster) on 127.0.0.1, with -vms virtual machines in each of the two resource pools,
// so -vms 6 gives 12 VMs and -vms 1000 gives 2,000. Built against Debian's
// golang-github-vmware-govmomi-dev (0.24) with GO111MODULE=off.
//
// Output on stdout, one line each, then it serves until SIGTERM/SIGINT:
//
//	URL https://user:pass@127.0.0.1:PORT/sdk
//	READY <number of VMs>
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"flag"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(1)
}

// parseDelays reads "Method=ms,Method=ms" into the simulator's per-method delays.
func parseDelays(spec string) map[string]int {
	delays := map[string]int{}
	for _, item := range strings.Split(spec, ",") {
		if item == "" {
			continue
		}
		kv := strings.SplitN(item, "=", 2)
		if len(kv) != 2 {
			fail("bad -method-delay item %q (want Method=milliseconds)", item)
		}
		ms, err := strconv.Atoi(kv[1])
		if err != nil || ms < 0 {
			fail("bad delay in %q", item)
		}
		delays[kv[0]] = ms
	}
	return delays
}

// selfSigned makes a P-256 certificate for 127.0.0.1 and writes it (PEM) to certOut, so
// that a client can be told to trust it. (httptest's built-in certificate has a key that
// Debian's OpenSSL security level refuses whatever the trust.)
func selfSigned(certOut string) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fail("key: %v", err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "guestfence vcsim"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		fail("certificate: %v", err)
	}
	if certOut != "" {
		block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		if err := os.WriteFile(certOut, block, 0o644); err != nil {
			fail("writing %s: %v", certOut, err)
		}
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

var thisVM = regexp.MustCompile(`<_this[^>]*type="VirtualMachine"[^>]*>([^<]+)</_this>`)

// denyPower answers every PowerOnVM_Task/PowerOffVM_Task with the NoPermission fault
// vCenter sends to a user who lacks the privilege (vcsim itself checks no privileges).
func denyPower(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			next.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		privilege := ""
		switch {
		case bytes.Contains(body, []byte("<PowerOnVM_Task")):
			privilege = "VirtualMachine.Interact.PowerOn"
		case bytes.Contains(body, []byte("<PowerOffVM_Task")):
			privilege = "VirtualMachine.Interact.PowerOff"
		}
		if privilege == "" {
			next.ServeHTTP(w, r)
			return
		}
		vm := "vm-0"
		if m := thisVM.FindSubmatch(body); m != nil {
			vm = string(m[1])
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" `+
			`xmlns:xsd="http://www.w3.org/2001/XMLSchema" `+
			`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode>`+
			`<faultstring>Permission to perform this operation was denied.</faultstring>`+
			`<detail><NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission">`+
			`<object type="VirtualMachine">%s</object><privilegeId>%s</privilegeId>`+
			`</NoPermissionFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>`,
			vm, privilege)
	})
}

// addDuplicate creates folder /DC0/vm/dup holding a second VM named like an existing one.
func addDuplicate(ctx context.Context, u *url.URL, name string) error {
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return err
	}
	defer func() { _ = c.Logout(ctx) }()
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.Datacenter(ctx, "DC0")
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	folder, err := folders.VmFolder.CreateFolder(ctx, "dup")
	if err != nil {
		return err
	}
	pool, err := finder.ResourcePool(ctx, "/DC0/host/DC0_C0/Resources")
	if err != nil {
		return err
	}
	ds, err := finder.Datastore(ctx, "LocalDS_0")
	if err != nil {
		return err
	}
	spec := types.VirtualMachineConfigSpec{
		Name:    name,
		GuestId: string(types.VirtualMachineGuestOsIdentifierOtherGuest),
		Files:   &types.VirtualMachineFileInfo{VmPathName: "[" + ds.Name() + "] dup"},
	}
	task, err := folder.CreateVM(ctx, spec, pool, nil)
	if err != nil {
		return err
	}
	return task.Wait(ctx)
}

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 (0: any free port)")
	vms := flag.Int("vms", 6, "virtual machines per resource pool (two pools)")
	useTLS := flag.Bool("tls", true, "serve https (self-signed certificate)")
	auth := flag.String("auth", "", "user:password to require at login (default: any non-empty)")
	duplicate := flag.String("duplicate", "", "also create /DC0/vm/dup/NAME, a second VM named NAME")
	delays := flag.String("method-delay", "", "Method=milliseconds,... delays of SOAP methods")
	deny := flag.Bool("deny-power", false, "refuse power on/off with NoPermission")
	certOut := flag.String("cert-out", "", "write the (self-signed) server certificate here")
	flag.Parse()

	model := simulator.VPX()
	model.Machine = *vms
	model.Autostart = true
	if err := model.Create(); err != nil {
		fail("creating the model: %v", err)
	}
	defer model.Remove()

	listen := &url.URL{Host: fmt.Sprintf("127.0.0.1:%d", *port)}
	if *auth != "" {
		kv := strings.SplitN(*auth, ":", 2)
		if len(kv) != 2 || kv[0] == "" || kv[1] == "" {
			fail("-auth wants user:password")
		}
		listen.User = url.UserPassword(kv[0], kv[1])
	}
	model.Service.Listen = listen
	if *useTLS {
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(*certOut)}}
	}
	server := model.Service.NewServer()
	defer server.Close()
	if *deny {
		// before the first request: http.Server reads Handler per request
		server.Config.Handler = denyPower(server.Config.Handler)
	}

	ctx := context.Background()
	if *duplicate != "" {
		if err := addDuplicate(ctx, server.URL, *duplicate); err != nil {
			fail("creating the duplicate VM %q: %v", *duplicate, err)
		}
	}
	// delays last, so that building the model and the duplicate are not slowed down
	if *delays != "" {
		model.DelayConfig.MethodDelay = parseDelays(*delays)
	}

	count := model.Count()
	fmt.Printf("URL %s\n", server.URL.String())
	fmt.Printf("READY %d\n", count.Machine)
	os.Stdout.Sync()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
