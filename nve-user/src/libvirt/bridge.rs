//! `nve libvirt-events`: the resident bridge from libvirt's domain lifecycle events to nve's
//! signaling, for the moments libvirt's qemu hook is not called:
//!
//! | libvirt event | where | nve, per interface of the domain |
//! |---|---|---|
//! | Suspended Migrated (or Post-copy) | source, the switchover | `pause` migrating out toward 0.0.0.0 (the VTEP the NVA says expects the vNIC) |
//! | Resumed (any detail) | either | paused (inactive) -> `resume`; pre-associated migrating in -> `associate`; else nothing |
//! | Started, Defined | | the domain's cache entry is read again |
//! | Stopped, Undefined | | it is dropped |
//!
//! The stopped VM's tap swallows every frame until the pause lands, so the switchover costs
//! no virsh call (the domain comes from [`Domains`]) and its interfaces are paused at once,
//! together; each event's time from virsh's stamp to nve's answer is logged. The daemon
//! serves one request per connection, so each request opens one (a Unix socket connect).
//! libvirt or virsh gone: logged, retried with backoff, never an exit; a line that is not a
//! lifecycle event is logged and skipped.
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;

use super::{
    Interface,
    domains::{Domain, Domains},
    event_line::{self, Event, Lifecycle, Line},
    virsh::{EventStream, Virsh},
};
use crate::{
    api::{Migration, SignalReply, VnicRequest, VnicView},
    client::Client,
    vnic::{Op, VnicState},
};

/// First wait before following libvirt again after `virsh event` ended.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A `virsh event` that ran this long was a working session: the backoff starts over.
const STEADY: Duration = Duration::from_secs(60);
/// Longest wait for one answer of the daemon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows libvirt's events at `uri` for the daemon behind `client` until SIGTERM or SIGINT.
pub async fn run(client: &Client, uri: Option<String>) -> anyhow::Result<()> {
    let bridge = Bridge {
        client,
        virsh: Virsh::new(uri),
        domains: Domains::default(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = bridge.follow() => unreachable!("follow() retries for ever"),
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
    Ok(())
}

struct Bridge<'a> {
    client: &'a Client,
    virsh: Virsh,
    domains: Domains,
}

impl Bridge<'_> {
    /// Runs `virsh event` sessions one after the other, with backoff between them.
    async fn follow(&self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let why = match self.virsh.events() {
                Ok(stream) => self.session(stream).await,
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() >= STEADY {
                backoff = MIN_BACKOFF;
            }
            tracing::warn!(
                uri = self.virsh.uri(),
                retry_in_s = backoff.as_secs(),
                "not following libvirt's events (events until then are missed): virsh event ended: {why}"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One `virsh event` until it ends: why it ended.
    async fn session(&self, mut stream: EventStream) -> String {
        tracing::info!(
            uri = self.virsh.uri(),
            "following libvirt's lifecycle events"
        );
        // After subscribing, so that no event between the list and the stream is missed;
        // in the background, so that events are handled meanwhile.
        let (domains, virsh) = (self.domains.clone(), self.virsh.clone());
        let fill = tokio::spawn(async move {
            match domains.fill(&virsh).await {
                Ok((n, ifaces)) => tracing::info!(
                    domains = n,
                    interfaces = ifaces,
                    "cached the active domains"
                ),
                Err(e) => tracing::warn!("caching the active domains: {e:#}"),
            }
        });
        let why = loop {
            match stream.next_line().await {
                Ok(Some(line)) => self.on_line(&line).await,
                Ok(None) => break stream.ended().await,
                Err(e) => break format!("reading its output: {e}"),
            }
        };
        fill.abort();
        why
    }

    async fn on_line(&self, line: &str) {
        let read_at = Instant::now();
        tracing::debug!(line, "from virsh");
        let Line::Lifecycle(ev) = event_line::parse(line) else {
            if !line.trim().is_empty() {
                tracing::info!(line, "not a lifecycle event: skipped");
            }
            return;
        };
        tracing::debug!(domain = %ev.domain, event = ?ev.event, detail = %ev.detail, "event");
        match ev.event {
            Event::Suspended if is_switchover(&ev.detail) => self.switchover(&ev, read_at).await,
            Event::Resumed => {
                self.resumed(&ev, read_at).await;
                self.refresh_later(&ev.domain);
            }
            Event::Started | Event::Defined => self.refresh_later(&ev.domain),
            Event::Stopped | Event::Undefined => self.domains.forget(&ev.domain),
            _ => {}
        }
    }

    /// The source VM stopped for the switchover: its vNICs forward to the destination.
    async fn switchover(&self, ev: &Lifecycle, read_at: Instant) {
        let Some(domain) = self.domain(&ev.domain).await else {
            return;
        };
        if domain.interfaces.is_empty() {
            return;
        }
        let req = switchover_request();
        let sent = domain
            .interfaces
            .iter()
            .map(|i| self.signal(&domain, i, &req));
        let answers = join_all(sent).await;
        self.report(
            ev,
            read_at,
            "pause toward the destination",
            &domain,
            answers,
        );
    }

    /// The VM runs (again) here: a paused vNIC resumes, an arriving one is associated.
    async fn resumed(&self, ev: &Lifecycle, read_at: Instant) {
        let Some(domain) = self.domain(&ev.domain).await else {
            return;
        };
        if domain.interfaces.is_empty() {
            return;
        }
        let held: Vec<VnicView> = match self.request(self.client.get("/v1/vnics")).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(domain = %ev.domain, "Resumed: reading nve's vNICs: {e}");
                return;
            }
        };
        for iface in &domain.interfaces {
            let current = held
                .iter()
                .find(|v| v.vm == domain.uuid && v.index == iface.index);
            let Some(req) = on_resumed(iface, current) else {
                tracing::debug!(domain = %ev.domain, vnic = iface.index, state = ?current.map(|v| v.state), "Resumed: nothing to signal");
                continue;
            };
            let answer = self.signal(&domain, iface, &req).await;
            let what = format!("{:?}", req.op).to_lowercase();
            self.report(ev, read_at, &what, &domain, vec![answer]);
        }
    }

    /// The cached domain, or (not cached: the bridge started after it, or its refresh is
    /// still running) read now.
    async fn domain(&self, name: &str) -> Option<std::sync::Arc<Domain>> {
        if let Some(d) = self.domains.get(name) {
            return Some(d);
        }
        tracing::info!(domain = %name, "not cached: reading it now (virsh dumpxml)");
        match self.domains.refresh(&self.virsh, name).await {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(domain = %name, "cannot signal nve for it: {e:#}");
                None
            }
        }
    }

    /// Reads the domain again in the background (its taps, its interfaces).
    fn refresh_later(&self, name: &str) {
        let (domains, virsh, name) = (self.domains.clone(), self.virsh.clone(), name.to_string());
        tokio::spawn(async move {
            if let Err(e) = domains.refresh(&virsh, &name).await {
                tracing::warn!(domain = %name, "not cached: {e:#}");
            }
        });
    }

    /// Sends `req` for `iface`'s vNIC.
    async fn signal(
        &self,
        domain: &Domain,
        iface: &Interface,
        req: &VnicRequest,
    ) -> (u32, Result<SignalReply, String>) {
        let path = format!("/v1/vnics/{}/{}", domain.uuid, iface.index);
        (
            iface.index,
            self.request(self.client.post_json(&path, req)).await,
        )
    }

    /// `call`, bounded by [`REQUEST_TIMEOUT`]; errors as text with the API's code.
    async fn request<T>(
        &self,
        call: impl Future<Output = Result<T, crate::client::ClientError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        }
    }

    /// Logs what nve answered for `ev`, and how long it took: from virsh's stamp (libvirt
    /// sent the event; milliseconds, truncated) and from reading the line.
    fn report(
        &self,
        ev: &Lifecycle,
        read_at: Instant,
        what: &str,
        domain: &Domain,
        answers: Vec<(u32, Result<SignalReply, String>)>,
    ) {
        let handled_us = read_at.elapsed().as_micros() as u64;
        let event_to_answer_ms = ev.at.map(|at| ms_since(at, SystemTime::now()));
        for (index, answer) in answers {
            match answer {
                Ok(reply) => tracing::info!(
                    domain = %ev.domain,
                    vm = %domain.uuid,
                    vnic = index,
                    state = ?reply.vnic.as_ref().map(|v| v.state),
                    migration = ?reply.vnic.as_ref().map(|v| v.migration),
                    event_to_answer_ms,
                    handled_us,
                    "{:?} {}: {what}: nve answered", ev.event, ev.detail,
                ),
                Err(e) => tracing::warn!(
                    domain = %ev.domain,
                    vm = %domain.uuid,
                    vnic = index,
                    event_to_answer_ms,
                    handled_us,
                    "{:?} {}: {what}: nve refused: {e}", ev.event, ev.detail,
                ),
            }
        }
    }
}

/// The details of Suspended that are a migration's switchover on the source.
fn is_switchover(detail: &str) -> bool {
    matches!(detail, "Migrated" | "Post-copy")
}

/// The switchover's pause: libvirt never tells the source where the domain goes, so the
/// hint is 0.0.0.0, "toward the VTEP the NVA says expects this vNIC".
pub fn switchover_request() -> VnicRequest {
    VnicRequest {
        migration: Migration::MigratingOut(std::net::Ipv4Addr::UNSPECIFIED),
        ..VnicRequest::bare(Op::Pause)
    }
}

/// What a Resumed event asks for `iface`, given nve's vNIC for it now: a paused one resumes
/// (the migration failed or was cancelled: the VM runs here again), one pre-associated
/// migrating in is associated (the VM runs here now; its RARPs would do it too).
pub fn on_resumed(iface: &Interface, current: Option<&VnicView>) -> Option<VnicRequest> {
    match current?.state {
        VnicState::Inactive => Some(VnicRequest::bare(Op::Resume)),
        VnicState::PreAssociated if current?.migration.is_migrating_in() => {
            super::request(Op::Associate, Migration::None, iface).ok()
        }
        _ => None,
    }
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier: clocks apart).
fn ms_since(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{super::fixtures::*, *};

    #[test]
    fn resumed_resumes_the_paused_and_associates_the_arriving() {
        let op = |current: Option<&VnicView>| on_resumed(&iface(), current).map(|r| r.op);
        let out = Migration::MigratingOut(std::net::Ipv4Addr::new(10, 0, 0, 2));
        let arriving = Migration::MigratingIn(std::net::Ipv4Addr::UNSPECIFIED);
        assert_eq!(op(Some(&held(VnicState::Inactive, out))), Some(Op::Resume));
        let assoc = on_resumed(&iface(), Some(&held(VnicState::PreAssociated, arriving)))
            .expect("an arriving vNIC is associated");
        assert_eq!(
            (
                assoc.op,
                assoc.port.as_deref(),
                assoc.macs,
                assoc.vn.as_deref()
            ),
            (
                Op::Associate,
                Some("vnet0"),
                vec![iface().mac],
                Some("blue")
            )
        );
        // Nothing for what runs already, a plain pre-association (the hook's `started`
        // associates it) or a vNIC nve does not hold.
        assert_eq!(
            op(Some(&held(VnicState::Associated, Migration::None))),
            None
        );
        assert_eq!(
            op(Some(&held(VnicState::PreAssociated, Migration::None))),
            None
        );
        assert_eq!(op(None), None);
    }

    #[test]
    fn the_switchover_pauses_toward_the_expected_vtep() {
        assert!(is_switchover("Migrated") && is_switchover("Post-copy"));
        assert!(!is_switchover("Paused") && !is_switchover("I/O Error"));
        let body = serde_json::to_value(switchover_request()).unwrap();
        assert_eq!(body["op"], "pause");
        assert_eq!(body["migration"]["migrating-out"], "0.0.0.0");
    }
}
