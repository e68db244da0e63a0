//! A node's reserve of one tenant's quota: taken from Redis together with a request,
//! spent by the node's next requests without a call, given back when it expires.
//!
//! A busy tenant's every admission would otherwise be a script call, and under a
//! concurrency or output-token limit its every settle another. The admission a node
//! sends for such a tenant asks, besides its own request, for a reserve: what about as
//! many requests as the node admitted in the last [`ReserveConfig::ttl`] need (that
//! many requests, that many times this request's prompt and output tokens, that many
//! concurrency slots), all or nothing, and refused without refusing the request. The
//! node then admits from the reserve until it runs short or its `ttl` ends; a request
//! that ends while the reserve lives returns its slot and its unused output tokens to
//! it (up to what the reserve was given). What is left is given back: by the next call,
//! or by a call of its own when the reserve expires (the tenant actor checks every
//! `ttl`).
//!
//! The price is precision, kept small: a reserve is at most
//! [`ReserveConfig::max_requests`] requests and at most `1 / (SHARE × node_count)` of
//! what remains of any limit when it is taken, so a tenant far from its limits pays one
//! call per reserve, and one near a limit (or new, or quiet) pays one per request, as
//! without reserves. Only one call at a time asks for a reserve.

use std::time::Duration;

use tokio::time::Instant;

use crate::quota::RateLimitSnapshot;

/// A reserve holds at most this fraction (divided by the node count) of what remains of
/// any limit.
pub const SHARE: u64 = 64;

/// How reserves are sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReserveConfig {
    /// The most requests one reserve is for (1: no reserves).
    pub max_requests: u64,
    /// How long a reserve is used before what is left is given back.
    pub ttl: Duration,
    /// How many nodes share the limits.
    pub node_count: u64,
}

/// What a call asks to reserve besides its request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// New concurrency slots (the free slots of the reserve it replaces are kept).
    pub slots: u64,
}

/// What a reserve gives back: unused amounts of each rate, and unused slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GiveBack {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub slots: Vec<String>,
}

impl GiveBack {
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.prompt_tokens == 0 && self.output_tokens == 0 && self.slots.is_empty()
    }
}

#[derive(Debug)]
struct Held {
    requests: u64,
    prompt_tokens: u64,
    output_tokens: u64,
    /// The output tokens it was given, and those of the request it came with (what
    /// returns may fill it up to).
    output_room: u64,
    free_slots: Vec<String>,
    /// The slots it was given, the one of the request it came with, and those of the
    /// node's requests in flight when it came (what returns may fill it up to).
    slots_room: usize,
    leased: bool,
    expires_at: Instant,
}

/// Admissions counted over the last two periods of `ttl`.
#[derive(Debug)]
struct Demand {
    started: Instant,
    current: u64,
    previous: u64,
}

impl Demand {
    fn roll(&mut self, ttl: Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed >= ttl {
            self.previous = if elapsed < ttl * 2 { self.current } else { 0 };
            self.current = 0;
            self.started = now;
        }
    }

    /// Admissions in the last full period (or the current one, if more).
    fn recent(&mut self, ttl: Duration, now: Instant) -> u64 {
        self.roll(ttl, now);
        self.previous.max(self.current)
    }
}

/// One tenant's reserve on one node. Plain logic: the tenant's quota asks it what to
/// send and tells it what came back.
#[derive(Debug)]
pub struct Reserve {
    config: ReserveConfig,
    held: Option<Held>,
    /// A call that asked for a reserve has not answered yet.
    asking: bool,
    demand: Demand,
    /// Released and not given back yet.
    owed: GiveBack,
    /// The free slots of the reserve a call on its way replaces, kept for the next one,
    /// and how many it may keep (its size and the request's own).
    carried: Vec<String>,
    carried_room: usize,
}

impl Reserve {
    pub fn new(config: ReserveConfig, now: Instant) -> Self {
        Self {
            config,
            held: None,
            asking: false,
            demand: Demand { started: now, current: 0, previous: 0 },
            owed: GiveBack::default(),
            carried: Vec::new(),
            carried_room: 0,
        }
    }

    /// Counts an admission of this node (decided by Redis or by the reserve).
    pub fn admitted(&mut self, now: Instant) {
        self.demand.roll(self.config.ttl, now);
        self.demand.current += 1;
    }

    /// Takes one request from a live reserve: `Some(slot)` (`None` as the slot without a
    /// concurrency limit), or `None` when the reserve cannot cover it.
    pub fn take(&mut self, prompt_tokens: u64, output_tokens: u64, now: Instant) -> Option<Option<String>> {
        let held = self.held.as_mut().filter(|held| now < held.expires_at)?;
        let covered = held.requests >= 1
            && held.prompt_tokens >= prompt_tokens
            && held.output_tokens >= output_tokens
            && (!held.leased || !held.free_slots.is_empty());
        if !covered {
            return None;
        }
        held.requests -= 1;
        held.prompt_tokens -= prompt_tokens;
        held.output_tokens -= output_tokens;
        let slot = if held.leased { held.free_slots.pop() } else { None };
        self.admitted(now);
        Some(slot)
    }

    /// What a call for one request should ask to reserve and give back: the call
    /// replaces the reserve held now, if any, whose rates are given back with what was
    /// released, and whose free slots the new reserve keeps (up to its size; a slot
    /// given back and taken again would cost two commands more). Only one call at a time
    /// asks for a reserve; `snapshot` (the tenant's last known state) bounds it;
    /// `leased`: the tenant has a concurrency limit; `in_flight`: the node's requests
    /// of the tenant in flight (whose slots the new reserve may keep when they end).
    pub fn plan(
        &mut self,
        prompt_tokens: u64,
        output_tokens: u64,
        leased: bool,
        in_flight: u64,
        snapshot: &RateLimitSnapshot,
        now: Instant,
    ) -> (Asked, GiveBack) {
        if self.asking {
            return (Asked::default(), GiveBack::default());
        }
        let mut slots = match self.held.take() {
            Some(held) => {
                self.owed.requests += held.requests;
                self.owed.prompt_tokens += held.prompt_tokens;
                self.owed.output_tokens += held.output_tokens;
                held.free_slots
            }
            None => Vec::new(),
        };
        let more = self.size(prompt_tokens, output_tokens, snapshot, now).saturating_sub(1);
        let wanted = if leased { more as usize } else { 0 };
        if slots.len() > wanted {
            self.owed.slots.extend(slots.drain(wanted..));
        }
        let back = std::mem::take(&mut self.owed);
        if more == 0 {
            return (Asked::default(), back);
        }
        self.asking = true;
        let asked = Asked {
            requests: more,
            prompt_tokens: more * prompt_tokens,
            output_tokens: more * output_tokens,
            slots: (wanted - slots.len()) as u64,
        };
        self.carried = slots;
        self.carried_room = wanted + 1 + in_flight as usize;
        (asked, back)
    }

    /// How many requests a reserve taken now should be for (with the request asking).
    fn size(&mut self, prompt_tokens: u64, output_tokens: u64, snapshot: &RateLimitSnapshot, now: Instant) -> u64 {
        let mut size = self.config.max_requests.min(self.demand.recent(self.config.ttl, now));
        let share = SHARE * self.config.node_count.max(1);
        let rates = [
            (snapshot.requests, 1),
            (snapshot.prompt_tokens, prompt_tokens),
            (snapshot.output_tokens, output_tokens),
            (snapshot.concurrent_requests, 1),
        ];
        for (state, amount) in rates {
            match state {
                Some(state) if amount > 0 => size = size.min(state.remaining / (share * amount)),
                Some(_) => {}
                // The state is not known yet (no answer so far, or limits just changed),
                // or a limit is gone: no reserve this time.
                None => return 1,
            }
        }
        size.max(1)
    }

    /// The call that [`plan`](Self::plan) asked `asked` for answered: `granted` whether
    /// the reserve came with it (its new slots are `<grant>.<k>`); `leased` whether the
    /// tenant has a concurrency limit; `in_flight` the node's requests in flight.
    pub fn filled(&mut self, asked: Asked, granted: bool, grant: &str, leased: bool, in_flight: u64, now: Instant) {
        if asked.requests == 0 {
            return;
        }
        self.asking = false;
        let mut free_slots = std::mem::take(&mut self.carried);
        if !granted {
            self.owed.slots.append(&mut free_slots);
            return;
        }
        free_slots.extend((1..=asked.slots).map(|k| format!("{grant}.{k}")));
        self.held = Some(Held {
            requests: asked.requests,
            prompt_tokens: asked.prompt_tokens,
            output_tokens: asked.output_tokens,
            output_room: asked.output_tokens + asked.output_tokens / asked.requests,
            slots_room: if leased { free_slots.len() + 1 + in_flight as usize } else { 0 },
            free_slots,
            leased,
            expires_at: now + self.config.ttl,
        });
    }

    /// A request of this node ended: a live reserve with room (for what it was given,
    /// the request it came with and those in flight then) keeps its slot (`None` without a concurrency limit) and
    /// its unused output tokens; while the call for the next reserve is on its way, that
    /// one keeps the slot (up to its size) and the tokens go back with the next call.
    /// `false`: settle it with Redis.
    pub fn returned(&mut self, slot: Option<&str>, unused_output_tokens: u64, now: Instant) -> bool {
        let Some(held) = self.held.as_mut().filter(|held| now < held.expires_at) else {
            if !self.asking {
                return false;
            }
            if let Some(slot) = slot {
                if self.carried.len() >= self.carried_room {
                    return false;
                }
                self.carried.push(slot.to_string());
            }
            self.owed.output_tokens += unused_output_tokens;
            return true;
        };
        if held.leased != slot.is_some() || (held.leased && held.free_slots.len() >= held.slots_room) {
            return false;
        }
        if let Some(slot) = slot {
            held.free_slots.push(slot.to_string());
        }
        held.output_tokens = (held.output_tokens + unused_output_tokens).min(held.output_room.max(held.output_tokens));
        true
    }

    /// The slots this node holds unused (renewed with its grants).
    pub fn free_slots(&self) -> impl Iterator<Item = &String> {
        self.held.iter().flat_map(|held| held.free_slots.iter()).chain(self.carried.iter())
    }

    /// What to give back now, on its own call: an expired reserve, and what was released
    /// (`None`: nothing).
    pub fn expire(&mut self, now: Instant) -> Option<GiveBack> {
        if self.held.as_ref().is_some_and(|held| now >= held.expires_at) {
            self.release();
        }
        Some(std::mem::take(&mut self.owed)).filter(|back| !back.is_empty())
    }

    /// Stops using the reserve (the limits changed, or a call replaces it): what it holds
    /// is owed back.
    pub fn release(&mut self) {
        if let Some(held) = self.held.take() {
            self.owed.requests += held.requests;
            self.owed.prompt_tokens += held.prompt_tokens;
            self.owed.output_tokens += held.output_tokens;
            self.owed.slots.extend(held.free_slots);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::LimitState;

    const TTL: Duration = Duration::from_secs(1);

    fn config(max_requests: u64) -> ReserveConfig {
        ReserveConfig { max_requests, ttl: TTL, node_count: 1 }
    }

    fn state(remaining: u64) -> Option<LimitState> {
        Some(LimitState { limit: remaining, remaining, reset: Duration::ZERO })
    }

    fn roomy() -> RateLimitSnapshot {
        RateLimitSnapshot {
            requests: state(1_000_000),
            prompt_tokens: state(100_000_000),
            output_tokens: state(100_000_000),
            concurrent_requests: state(100_000),
        }
    }

    fn busy(reserve: &mut Reserve, admissions: u64, now: Instant) {
        for _ in 0..admissions {
            reserve.admitted(now);
        }
    }

    #[test]
    fn a_reserve_follows_demand_up_to_its_maximum() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(32), t0);
        // Nothing admitted lately: no reserve.
        assert_eq!(reserve.plan(10, 20, true, 0, &roomy(), t0), (Asked::default(), GiveBack::default()));
        busy(&mut reserve, 5, t0);
        let (asked, back) = reserve.plan(10, 20, true, 0, &roomy(), t0);
        assert_eq!(asked, Asked { requests: 4, prompt_tokens: 40, output_tokens: 80, slots: 4 });
        assert!(back.is_empty());
        // Only one call at a time asks.
        assert_eq!(reserve.plan(10, 20, true, 0, &roomy(), t0).0, Asked::default());
        reserve.filled(asked, false, "n:1", true, 0, t0);
        busy(&mut reserve, 100, t0);
        assert_eq!(reserve.plan(10, 20, true, 0, &roomy(), t0).0.requests, 31, "at most 32 requests in all");
    }

    #[test]
    fn a_reserve_is_a_small_share_of_what_remains() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(32), t0);
        busy(&mut reserve, 100, t0);
        // 640 prompt tokens left of the limit, requests of 10: one 64th is one request.
        let tight = RateLimitSnapshot { prompt_tokens: state(640), ..roomy() };
        assert_eq!(reserve.plan(10, 20, true, 0, &tight, t0).0, Asked::default());
        let mut reserve = Reserve::new(ReserveConfig { node_count: 2, ..config(32) }, t0);
        busy(&mut reserve, 100, t0);
        // 10 concurrency slots free: none to reserve.
        let slots = RateLimitSnapshot { concurrent_requests: state(10), ..roomy() };
        assert_eq!(reserve.plan(1, 1, true, 0, &slots, t0).0, Asked::default());
        // An unknown state (no answer yet): none either.
        let unknown = RateLimitSnapshot { requests: None, ..roomy() };
        assert_eq!(reserve.plan(1, 1, true, 0, &unknown, t0).0, Asked::default());
        // 2 nodes, 12,800 requests left: 100 per reserve at most, then the maximum.
        let limited = RateLimitSnapshot { requests: state(12_800), ..roomy() };
        assert_eq!(reserve.plan(1, 1, true, 0, &limited, t0).0.requests, 31);
    }

    #[test]
    fn requests_are_taken_from_the_reserve_and_slots_come_back() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(32), t0);
        busy(&mut reserve, 3, t0);
        let (asked, _) = reserve.plan(10, 20, true, 0, &roomy(), t0);
        assert_eq!((asked.requests, asked.slots), (2, 2));
        reserve.filled(asked, true, "n:7", true, 0, t0);
        let a = reserve.take(10, 20, t0).expect("covered");
        let b = reserve.take(5, 20, t0).expect("covered");
        assert_eq!([a.as_deref(), b.as_deref()], [Some("n:7.2"), Some("n:7.1")]);
        assert_eq!(reserve.take(1, 1, t0), None, "no request left");
        // A returned slot comes back with its unused output tokens, up to the 2 slots
        // given and the one of the request that came with them; one more is settled with
        // Redis.
        assert!(reserve.returned(Some("n:7.2"), 15, t0));
        assert!(reserve.returned(Some("n:3"), 0, t0));
        assert!(reserve.returned(Some("n:7"), 0, t0));
        assert!(!reserve.returned(Some("n:4"), 0, t0), "the reserve is full");
        assert_eq!(reserve.free_slots().count(), 3);
        // Expired: everything left goes back, and nothing is taken any more.
        let later = t0 + TTL;
        assert_eq!(reserve.take(1, 1, later), None);
        assert!(!reserve.returned(Some("n:5"), 0, later));
        let back = reserve.expire(later).expect("something to give back");
        assert_eq!(back, GiveBack { requests: 0, prompt_tokens: 5, output_tokens: 15, slots: vec!["n:7.2".into(), "n:3".into(), "n:7".into()] });
        assert_eq!(reserve.expire(later), None);
    }

    #[test]
    fn a_request_the_reserve_cannot_cover_replaces_it() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(8), t0);
        busy(&mut reserve, 8, t0);
        let (asked, _) = reserve.plan(10, 20, false, 0, &roomy(), t0);
        assert_eq!(asked.slots, 0);
        reserve.filled(asked, true, "n:1", false, 0, t0);
        assert_eq!(reserve.take(10, 20, t0), Some(None), "no slot without a concurrency limit");
        assert_eq!(reserve.take(500, 20, t0), None, "too many prompt tokens");
        let (asked, back) = reserve.plan(500, 20, false, 0, &roomy(), t0);
        assert_eq!(back, GiveBack { requests: 6, prompt_tokens: 60, output_tokens: 120, slots: Vec::new() });
        assert_eq!(asked.requests, 7);
        assert_eq!(reserve.take(1, 1, t0), None, "the old reserve is gone");
    }

    #[test]
    fn a_reserve_keeps_the_slots_of_the_requests_in_flight_when_it_came() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(32), t0);
        busy(&mut reserve, 2, t0);
        let (asked, _) = reserve.plan(1, 1, true, 3, &roomy(), t0);
        assert_eq!(asked.slots, 1);
        // 3 requests were in flight: with the slot given and the request's own, room for 5.
        reserve.filled(asked, true, "n:1", true, 3, t0);
        for slot in ["n:2", "n:3", "n:4", "n:1"] {
            assert!(reserve.returned(Some(slot), 0, t0), "{slot}");
        }
        assert!(!reserve.returned(Some("n:5"), 0, t0));
        assert_eq!(reserve.free_slots().count(), 5);
    }

    #[test]
    fn a_new_reserve_keeps_the_free_slots_of_the_one_it_replaces() {
        let t0 = Instant::now();
        let mut reserve = Reserve::new(config(4), t0);
        busy(&mut reserve, 4, t0);
        let (asked, _) = reserve.plan(1, 1, true, 0, &roomy(), t0);
        assert_eq!((asked.requests, asked.slots), (3, 3));
        reserve.filled(asked, true, "n:1", true, 0, t0);
        for _ in 0..3 {
            assert!(reserve.take(1, 1, t0).is_some());
        }
        // Two of the three come back; the requests are spent, so the next call replaces
        // the reserve: it asks for one new slot only, and gives none back.
        assert!(reserve.returned(Some("n:1.3"), 0, t0));
        assert!(reserve.returned(Some("n:1.2"), 0, t0));
        assert_eq!(reserve.take(1, 1, t0), None);
        let (asked, back) = reserve.plan(1, 1, true, 0, &roomy(), t0);
        assert_eq!((asked.requests, asked.slots), (3, 1));
        assert!(back.slots.is_empty(), "{back:?}");
        reserve.filled(asked, true, "n:9", true, 0, t0);
        let taken: Vec<_> = (0..3).map(|_| reserve.take(1, 1, t0).unwrap().unwrap()).collect();
        assert_eq!(taken, ["n:9.1", "n:1.2", "n:1.3"]);
        // While the next call is on its way, a returned slot is kept for its reserve (up
        // to its size and the request's own), and the unused output tokens go back with
        // the call after it. Refused: the kept slots are given back by the next call.
        assert!(reserve.returned(Some("n:9.1"), 0, t0));
        assert_eq!(reserve.take(1, 1, t0), None);
        let (asked, _) = reserve.plan(1, 1, true, 0, &roomy(), t0);
        assert_eq!(asked.slots, 2);
        for slot in ["n:1.2", "n:1.3", "n:3"] {
            assert!(reserve.returned(Some(slot), 5, t0), "{slot}");
        }
        assert!(!reserve.returned(Some("n:4"), 5, t0), "no room left");
        reserve.filled(asked, false, "n:10", true, 0, t0);
        let back = reserve.expire(t0).unwrap();
        assert_eq!(back.slots, ["n:9.1", "n:1.2", "n:1.3", "n:3"]);
        assert_eq!(back.output_tokens, 15);
    }
}
