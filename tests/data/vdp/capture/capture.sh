#!/bin/bash
# Golden captures of lldpad's VDP: lldpad as the bridge (evbmode "bridge") in one network
# namespace, lldpad as the station in another, on the two ends of one veth; then the
# scripted bridge (fake_bridge.py) in place of the bridge lldpad, for what lldpad's bridge
# never answers (an assigned VID, error statuses). tcpdump in the station's namespace sees
# both directions. Writes OUT/pcap/{lldpad,fake}.pcap, OUT/pcap/phases-*.txt (when each
# step began, for extract.py), OUT/output/*.txt (what vdptool and lldptool printed); the
# station's start-up timings go to stdout. KEEP_LOGS=DIR keeps both lldpads' -V7 logs.
# Root only; everything it creates is removed on exit.
#
#   capture.sh OUT            (OUT = tests/data/vdp, then extract.py tests/data/vdp)
set -euo pipefail
OUT=$(realpath "${1:?usage: capture.sh OUT}")
HERE=$(dirname "$(realpath "$0")")
P=lrig-cap
BR=$P-br ST=$P-st
WORK=$(mktemp -d /tmp/$P.XXXXXX)
RTE=8 RETRIES=3 RWD=16 RKA=16
PIDS=()
mkdir -p "$OUT/pcap" "$OUT/output" "$WORK/timings"

cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
	ip netns del $BR 2>/dev/null || true
	ip netns del $ST 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT

conf() { # IFACE ROLE RRCAP
	cat <<CONF
dcbx :
{
  version = "1.0";
  dcbx_version = 2;
};
nearest_customer_bridge :
{
  $1 :
  {
    adminStatus = 3;
    tlvid0080c20d :
    {
      enableTx = true;
      evbmode = "$2";
      evbrrcap = $3;
      evbrrreq = true;
      evbgpid = true;
      ecpretries = $RETRIES;
      ecprte = $RTE;
      vdprwd = $RWD;
      vdprka = $RKA;
    };
  };
};
CONF
}

now() { date +%s.%N; }
phase() { echo "$(now) $1" >> "$PHASES"; }

# lldpad with a private /dev/shm (it refuses to start while /dev/shm/lldpad.state names a
# live pid, and leaves the file behind); -p: no /var/run/lldpad.pid.
lldpad_in() { # NS CONF LOG -> pid in $LAST
	ip netns exec "$1" unshare -m sh -c \
		"mount -t tmpfs lrig-shm /dev/shm && exec lldpad -p -V7 -f $2" > "$3" 2>&1 &
	LAST=$!
	PIDS+=("$LAST")
}

stop() { # PID
	kill "$1"
	for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
	kill -9 "$1"
}

vdp() { # NAME MODE UUID FILTER [HINTS]
	ip netns exec $ST vdptool -i vst0 -T -W -V "$2" -c mode="$2" -c mgrid2=blue \
		-c typeid=5 -c typeidver=1 -c uuid="$3" -c hints="${5:-none}" \
		-c filter="$4" > "$OUT/output/$1.txt" 2>&1 || true
	echo "== $1"; cat "$OUT/output/$1.txt"
}

# A command lldpad refuses at once: without -W, which would wait 5 s for an event anyway.
vdp_refused() { # NAME MODE UUID FILTER
	ip netns exec $ST vdptool -i vst0 -T -V "$2" -c mode="$2" -c mgrid2=blue \
		-c typeid=5 -c typeidver=1 -c uuid="$3" -c hints=none \
		-c filter="$4" > "$OUT/output/$1.txt" 2>&1 || true
	echo "== $1"; cat "$OUT/output/$1.txt"
}

list() { # NAME
	: > "$OUT/output/$1.txt"
	for m in assoc preassoc preassoc-rr; do
		ip netns exec $ST vdptool -i vst0 -t -V $m -c >> "$OUT/output/$1.txt" 2>&1 || true
	done
	echo "== $1"; cat "$OUT/output/$1.txt"
}

# The probe the rig uses: deassociating an unknown VSI sends nothing; lldpad answers
# "Device not found or inactive", then "VDP protocol not supported on interface", then,
# once VDP runs, "Invalid parameters".
probe() {
	ip netns exec $ST vdptool -i vst0 -T -V deassoc -c mode=deassoc -c mgrid2=probe \
		-c typeid=1 -c typeidver=1 -c uuid=00000000-0000-0000-0000-000000000001 \
		-c hints=none -c filter=0-02:00:00:00:00:01 2>&1 || true
}

wait_station() { # -> timings on stdout
	local t0 s last="" out
	t0=$(date +%s%N)
	for _ in $(seq 200); do
		s=$(ip netns exec $ST vdptool -p 2>&1 | head -1 || true)
		[[ $s =~ ^[0-9]+$ ]] || s="(no answer)"
		out="ping: $s; probe: $(probe | tr '\n' ' ')"
		if [ "$out" != "$last" ]; then
			echo "$(( ($(date +%s%N) - t0) / 1000000 )) ms: $out"
			last=$out
		fi
		case $out in *"Invalid parameters"*) return 0 ;; esac
		sleep 0.05
	done
	echo "station not ready after 10 s" >&2
	return 1
}

U=6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a
ip netns add $BR
ip netns add $ST
ip link add vbr0 netns $BR address 02:00:00:00:00:02 type veth \
	peer name vst0 netns $ST address 02:00:00:00:00:01
for n in $BR $ST; do ip -n $n link set lo up; done
ip -n $BR link set vbr0 up
ip -n $ST link set vst0 up
conf vbr0 bridge true > "$WORK/br.conf"

capture() { # PCAP
	ip netns exec $ST tcpdump -i vst0 -U -w "$1" 'ether proto 0x88cc or ether proto 0x8940' \
		2> "$WORK/tcpdump.log" &
	TCPDUMP=$!
	PIDS+=("$TCPDUMP")
	sleep 1
}

# --- Part 1: lldpad bridge <-> lldpad station --------------------------------------------
PHASES=$OUT/pcap/phases-lldpad.txt
: > "$PHASES"
capture "$OUT/pcap/lldpad.pcap"
phase start
lldpad_in $BR "$WORK/br.conf" "$WORK/br.log"
BRPID=$LAST
conf vst0 station false > "$WORK/st.conf"
lldpad_in $ST "$WORK/st.conf" "$WORK/st.log"
STPID=$LAST
wait_station | tee "$WORK/timings/startup.txt"
sleep 2
ip netns exec $ST lldptool -t -n -i vst0 -g ncb -V evb > "$OUT/output/lldptool-neighbor-evb.txt" 2>&1 || true
ip netns exec $ST lldptool -t -i vst0 -g ncb -V evb -c > "$OUT/output/lldptool-evb-config.txt" 2>&1 || true

phase assoc-macvid;      vdp assoc-macvid assoc ${U}10 0-02:00:00:00:00:10
phase keepalive-macvid;  sleep 1.6
list list-assoc-macvid
phase deassoc-macvid;    vdp deassoc-macvid deassoc ${U}10 0-02:00:00:00:00:10
sleep 1.5
phase assoc-gidmacvid;   vdp assoc-gidmacvid assoc ${U}11 0-02:00:00:00:00:10-10000
phase keepalive-gidmacvid; sleep 1.6
list list-assoc-gidmacvid
phase deassoc-gidmacvid; vdp deassoc-gidmacvid deassoc ${U}11 0-02:00:00:00:00:10-10000
sleep 1.5
phase assoc-gidvid;      vdp assoc-gidvid assoc ${U}12 0--10000
list list-assoc-gidvid
phase deassoc-gidvid;    vdp deassoc-gidvid deassoc ${U}12 0--10000
sleep 1.5
phase assoc-vid100;      vdp assoc-vid100 assoc ${U}13 100-02:00:00:00:00:13
phase deassoc-vid100;    vdp deassoc-vid100 deassoc ${U}13 100-02:00:00:00:00:13
sleep 1.5
phase preassoc;          vdp preassoc preassoc ${U}14 0-02:00:00:00:00:14
phase preassoc-rr;       vdp preassoc-rr preassoc-rr ${U}15 0-02:00:00:00:00:15-10000
list list-preassoc
phase preassoc-to-assoc; vdp preassoc-to-assoc assoc ${U}14 0-02:00:00:00:00:14
phase deassoc-preassoc;  vdp deassoc-preassoc deassoc ${U}14 0-02:00:00:00:00:14
phase deassoc-preassoc-rr; vdp deassoc-preassoc-rr deassoc ${U}15 0-02:00:00:00:00:15-10000
sleep 1.5
phase assoc-hint-to;     vdp assoc-hint-to assoc ${U}16 0-02:00:00:00:00:16 to
phase deassoc-hint-to;   vdp deassoc-hint-to deassoc ${U}16 0-02:00:00:00:00:16
sleep 1.5
phase assoc-hint-from;   vdp assoc-hint-from assoc ${U}17 0-02:00:00:00:00:17 from
phase deassoc-hint-from; vdp deassoc-hint-from deassoc ${U}17 0-02:00:00:00:00:17
sleep 1.5
vdp_refused deassoc-unknown-refused deassoc ${U}99 0-02:00:00:00:00:99
vdp_refused assoc-group0-refused assoc ${U}18 0-02:00:00:00:00:18-0
# The station goes away holding a VSI: the bridge's keep-alive timer expires.
phase assoc-before-station-stop; vdp assoc-before-station-stop assoc ${U}19 0-02:00:00:00:00:19
phase station-stop
stop $STPID
sleep 3
phase station-restart
conf vst0 station false > "$WORK/st.conf"
lldpad_in $ST "$WORK/st.conf" "$WORK/st2.log"
STPID=$LAST
wait_station | tee "$WORK/timings/restart.txt"
phase bridge-stop
stop $BRPID
sleep 1
phase assoc-nobridge;    vdp assoc-nobridge assoc ${U}20 0-02:00:00:00:00:20
list list-after-nobridge
phase assoc-nobridge-busy
vdp_refused assoc-nobridge-nowait assoc ${U}21 0-02:00:00:00:00:21
vdp_refused deassoc-busy-refused deassoc ${U}21 0-02:00:00:00:00:21
list list-nobridge-pending
sleep 1.5
phase end
sleep 0.5
[ -z "${KEEP_LOGS:-}" ] || cp "$WORK/st.log" "$WORK/br.log" "$KEEP_LOGS/"
stop $TCPDUMP

# --- Part 2: the scripted bridge <-> lldpad station --------------------------------------
PHASES=$OUT/pcap/phases-fake.txt
: > "$PHASES"
capture "$OUT/pcap/fake.pcap"
fake() { # ARGS...
	ip netns exec $BR python3 "$HERE/fake_bridge.py" vbr0 --rte $RTE --rwd $RWD --rka $RKA \
		--retries $RETRIES --seconds 30 "$@" > "$WORK/fake.log" 2>&1 &
	FAKE=$!
	PIDS+=("$FAKE")
	sleep 1.5
}
fake --vid 100
phase assoc-vid-assigned; vdp assoc-vid-assigned assoc ${U}30 0-02:00:00:00:00:30
phase keepalive-vid-assigned; sleep 1.6
list list-vid-assigned
vdp_refused deassoc-vid0-refused deassoc ${U}30 0-02:00:00:00:00:30
phase deassoc-vid-assigned; vdp deassoc-vid-assigned deassoc ${U}30 100-02:00:00:00:00:30
sleep 0.5
phase assoc-gid-vid-assigned; vdp assoc-gid-vid-assigned assoc ${U}31 0-02:00:00:00:00:31-10000
phase deassoc-gid-vid-assigned; vdp deassoc-gid-vid-assigned deassoc ${U}31 100-02:00:00:00:00:31-10000
stop $FAKE
fake --deassoc-after 1
phase assoc-before-unsolicited-deassoc
vdp assoc-before-unsolicited-deassoc assoc ${U}32 0-02:00:00:00:00:32
list list-before-unsolicited-deassoc
phase unsolicited-deassoc
sleep 2
list list-after-unsolicited-deassoc
stop $FAKE
for e in 1 2 3 4 5; do
	fake --err $e
	phase assoc-err$e; vdp assoc-err$e assoc ${U}4$e 0-02:00:00:00:00:4$e
	list list-after-err$e
	stop $FAKE
done
phase end
sleep 0.5
stop $TCPDUMP
