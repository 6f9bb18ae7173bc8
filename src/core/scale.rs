//! `ctl scale N`: how many nanny-started workers there should be. Growing
//! asks the least loaded nannies for workers in named slots; shrinking
//! retires (drains, then stops) the least busy workers, as `retire-worker`.

use super::{Core, Effects};
use crate::ids::{ConnId, WorkerId};
use crate::protocol::{SlotState, ToClient, ToNanny, ToWorker};

/// The most workers `ctl scale` may ask for (a typo must not fork-bomb a node).
pub const MAX_SCALE: u32 = 65_536;

/// A nanny as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NannyView {
    pub id: u64,
    /// Slots with a worker or one about to start (running, restarting).
    pub live: u32,
    /// Its retired slots, lowest first: reused before new ones.
    pub retired: Vec<u32>,
    /// One past its highest slot.
    pub next_slot: u32,
}

/// A worker that shrinking may retire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub worker: WorkerId,
    /// Tasks it holds (running and queued on it).
    pub assigned: usize,
}

/// What to do: slots to start per nanny, workers to retire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScalePlan {
    pub start: Vec<(u64, Vec<u32>)>,
    pub retire: Vec<WorkerId>,
}

/// Plans the way from the nannies' live slots to `target` workers: new ones
/// go one by one to the nanny with the fewest (lowest id on a tie); the
/// workers retired are the ones holding the fewest tasks, newest first.
pub fn plan_scale(nannies: &[NannyView], candidates: &[Candidate], target: u32) -> ScalePlan {
    let live: u64 = nannies.iter().map(|n| n.live as u64).sum();
    let mut plan = ScalePlan::default();
    if (target as u64) < live {
        let mut c = candidates.to_vec();
        c.sort_by(|a, b| a.assigned.cmp(&b.assigned).then(b.worker.cmp(&a.worker)));
        plan.retire = c.into_iter().take((live - target as u64) as usize).map(|c| c.worker).collect();
        return plan;
    }
    let mut views = nannies.to_vec();
    let mut picked: Vec<Vec<u32>> = vec![Vec::new(); views.len()];
    for _ in live..target as u64 {
        let Some(i) = (0..views.len()).min_by_key(|i| (views[*i].live, views[*i].id)) else { break };
        let v = &mut views[i];
        let slot = if v.retired.is_empty() {
            v.next_slot += 1;
            v.next_slot - 1
        } else {
            v.retired.remove(0)
        };
        v.live += 1;
        picked[i].push(slot);
    }
    plan.start = views.iter().zip(picked).filter(|(_, s)| !s.is_empty()).map(|(v, s)| (v.id, s)).collect();
    plan
}

fn live(state: &SlotState) -> bool {
    matches!(state, SlotState::Running { .. } | SlotState::Restarting { .. })
}

/// The nannies as `plan_scale` sees them, and the workers it may retire.
fn views(core: &Core) -> (Vec<NannyView>, Vec<Candidate>) {
    let nannies = core
        .nannies
        .iter()
        .map(|(id, n)| {
            let mut retired: Vec<u32> =
                n.slots.iter().filter(|s| s.state == SlotState::Retired).map(|s| s.slot).collect();
            retired.sort_unstable();
            let next_slot = n.slots.iter().map(|s| s.slot.saturating_add(1)).max().unwrap_or(0);
            let live = n.slots.iter().filter(|s| live(&s.state)).count() as u32;
            NannyView { id: *id, live, retired, next_slot }
        })
        .collect();
    let candidates = core
        .workers
        .iter()
        .filter(|(_, w)| !w.draining)
        .filter(|(_, w)| {
            w.nanny
                .as_ref()
                .is_some_and(|slot| core.nannies.values().any(|n| n.pid == slot.pid && n.host == w.host))
        })
        .map(|(id, w)| Candidate { worker: *id, assigned: w.assigned.len() })
        .collect();
    (nannies, candidates)
}

/// `ctl scale N`: changes the number of nanny-started workers to N. The
/// nannies' view of their slots is updated at once (they confirm with
/// `Slot`), so a second `scale` right after counts what the first asked for.
pub fn on_scale(core: &mut Core, fx: &mut impl Effects, conn: ConnId, target: u32) {
    if target > MAX_SCALE {
        let message = format!("scale {target}: at most {MAX_SCALE} workers");
        return fx.to_client(conn, ToClient::Error { job: None, message });
    }
    if core.nannies.is_empty() {
        let message = "no nanny is registered: `ctl scale` starts and stops workers through nannies \
                       (`actord nanny`)"
            .to_string();
        return fx.to_client(conn, ToClient::Error { job: None, message });
    }
    let (nannies, candidates) = views(core);
    let before: u32 = nannies.iter().map(|n| n.live).sum();
    let plan = plan_scale(&nannies, &candidates, target);
    let mut started = 0;
    for (id, slots) in plan.start {
        let Some(n) = core.nannies.get_mut(&id) else { continue };
        for slot in &slots {
            let info =
                crate::protocol::SlotInfo { slot: *slot, state: SlotState::Running { pid: 0 }, restarts: 0 };
            match n.slots.iter_mut().find(|s| s.slot == *slot) {
                Some(s) => s.state = info.state,
                None => n.slots.push(info),
            }
        }
        started += slots.len();
        fx.to_nanny(n.conn, ToNanny::StartWorkers { slots });
    }
    let retired = plan.retire.len();
    for worker in plan.retire {
        retire(core, fx, worker);
    }
    tracing::info!(target, before, started, retired, "scaling the nannies' workers");
    let message = match (started, retired) {
        (0, 0) if before == target => format!("already {target} workers"),
        (0, 0) => format!("{before} workers and none idle enough to retire yet; try again"),
        (s, 0) => format!("scaling from {before} to {target} workers: starting {s}"),
        (_, r) => format!(
            "scaling from {before} to {} workers: retiring {r} (they take no new tasks, finish the running ones, then stop)",
            before as usize - r
        ),
    };
    fx.to_client(conn, ToClient::Done { message });
}

/// Drains one nanny worker and asks its nanny not to restart it.
fn retire(core: &mut Core, fx: &mut impl Effects, worker: WorkerId) {
    let Some(w) = core.workers.find_worker_mut(worker) else { return };
    w.draining = true;
    let (wconn, host, nslot) = (w.conn, w.host.clone(), w.nanny.clone());
    let nanny = nslot.and_then(|slot| {
        core.nannies.values_mut().find(|n| n.pid == slot.pid && n.host == host).map(|n| (n, slot.slot))
    });
    match nanny {
        Some((n, slot)) => {
            if let Some(s) = n.slots.iter_mut().find(|s| s.slot == slot) {
                s.state = SlotState::Retired;
            }
            fx.to_nanny(n.conn, ToNanny::RetireWorker { slot });
        }
        None => fx.to_worker(wconn, ToWorker::Retire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanny(id: u64, live: u32, retired: Vec<u32>, next_slot: u32) -> NannyView {
        NannyView { id, live, retired, next_slot }
    }

    #[test]
    fn growing_fills_the_emptiest_nanny_and_reuses_retired_slots_first() {
        let n = [nanny(1, 2, vec![], 2), nanny(2, 0, vec![1], 2)];
        let plan = plan_scale(&n, &[], 5);
        assert_eq!(plan.start, vec![(1, vec![2]), (2, vec![1, 2])]);
        assert!(plan.retire.is_empty());
    }

    #[test]
    fn shrinking_retires_the_least_busy_newest_workers() {
        let n = [nanny(1, 3, vec![], 3)];
        let c = [
            Candidate { worker: WorkerId(1), assigned: 0 },
            Candidate { worker: WorkerId(2), assigned: 4 },
            Candidate { worker: WorkerId(3), assigned: 0 },
        ];
        assert_eq!(plan_scale(&n, &c, 1).retire, vec![WorkerId(3), WorkerId(1)]);
        assert_eq!(plan_scale(&n, &c, 0).retire, vec![WorkerId(3), WorkerId(1), WorkerId(2)]);
        assert_eq!(plan_scale(&n, &c, 3), ScalePlan::default());
    }

    /// Through the core: a nanny with two workers is told to start one in
    /// a new slot, then one of its workers is retired; a second `scale`
    /// right after counts what the first asked for.
    #[test]
    fn on_scale_tells_the_nanny_and_counts_what_it_asked_for() {
        use super::super::testenv::{step, worker, TestFx, CLIENT};
        use crate::protocol::{NannySlot, SlotInfo};
        let mut core = Core::new(Default::default());
        let mut fx = TestFx::default();
        let nconn = ConnId(7);
        let running = |slot| SlotInfo { slot, state: SlotState::Running { pid: 10 + slot }, restarts: 0 };
        let msg = super::super::NannyMsg { host: "h".into(), pid: 5, slots: vec![running(0), running(1)] };
        super::super::on_nanny_registered(&mut core, &mut fx, nconn, msg);
        let mut ids = vec![];
        for slot in 0..2 {
            let mut w = worker(1);
            w.nanny = Some(NannySlot { pid: 5, slot });
            ids.push(step::on_worker_joined(&mut core, &mut fx, 0, ConnId(20 + slot as u64), w));
        }
        fx.nannies.clear();
        on_scale(&mut core, &mut fx, CLIENT, 3);
        assert!(
            matches!(&fx.nannies[..], [(c, ToNanny::StartWorkers { slots })] if *c == nconn && slots == &[2])
        );
        on_scale(&mut core, &mut fx, CLIENT, 3);
        assert_eq!(fx.nannies.len(), 1, "the slot asked for counts already");
        assert!(matches!(&fx.clients[1].1, ToClient::Done { message } if message == "already 3 workers"));
        fx.nannies.clear();
        on_scale(&mut core, &mut fx, CLIENT, 2);
        assert!(
            matches!(&fx.nannies[..], [(c, ToNanny::RetireWorker { slot: 1 })] if *c == nconn),
            "{:?}",
            fx.nannies
        );
        assert!(core.workers.find_worker(ids[1]).unwrap().draining, "it takes no new tasks");
        on_scale(&mut core, &mut fx, CLIENT, 70_000);
        assert!(
            matches!(&fx.clients.last().unwrap().1, ToClient::Error { message, .. } if message.contains("at most"))
        );
    }

    #[test]
    fn no_nanny_means_nothing_to_start() {
        assert_eq!(plan_scale(&[], &[], 4), ScalePlan::default());
    }
}
