//! The messages a supervisor takes: work arrived or started, its share of a cluster's
//! replicas, status and readiness requests, policy changes, tenants' reserved floor,
//! hand-back and shutdown.

use super::*;

/// A request was enqueued: count it, and start a replica at once if there is none.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkArrived {
    pub prompt_tokens: u64,
    pub max_tokens: u64,
}

impl Handler<WorkArrived> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkArrived, ctx: &mut Context<Self>) {
        self.arrivals += 1;
        self.prompt_tokens += msg.prompt_tokens;
        self.arrivals_total += 1;
        self.prompt_tokens_total += msg.prompt_tokens;
        self.wait.arrived(msg.prompt_tokens, msg.max_tokens);
        let counts = self.counts();
        if self.spec.runs_replicas && !self.spec.placement_driven {
            if counts.ready + counts.starting == 0 {
                self.tick(ctx);
            }
        } else if self.spec.load_report.is_some() && self.last_depth.waiting + self.last_depth.leased == 0 {
            // A cluster node whose replicas the leader places: work arriving at an idle
            // queue is what the leader must see soonest (it may be at zero replicas), so
            // sample now rather than at the next tick; at most every 100 ms.
            let due = self.last_early_sample.is_none_or(|at| at.elapsed() >= EARLY_SAMPLE_EVERY);
            if due {
                self.last_early_sample = Some(Instant::now());
                self.tick(ctx);
            }
        }
    }
}

/// The cluster's placement gives this node `replicas` replicas of the deployment (only
/// with `placement_driven`). Acted on at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetAssignment {
    pub replicas: u32,
}

impl Handler<SetAssignment> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: SetAssignment, ctx: &mut Context<Self>) {
        if self.assigned == Some(msg.replicas) {
            return;
        }
        tracing::info!(deployment = %self.spec.name, replicas = msg.replicas, "placement: assignment changed");
        self.assigned = Some(msg.replicas);
        if self.spec.placement_driven && self.spec.runs_replicas && !self.deleting {
            self.follow_assignment(ctx);
        }
    }
}

/// A request left the queue for a replica after waiting `waited` (the queue-delay
/// signal's mean wait of started requests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkStarted {
    pub waited: Duration,
}

impl Handler<WorkStarted> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkStarted, _: &mut Context<Self>) {
        self.started += 1;
        self.started_wait = self.started_wait.saturating_add(msg.waited);
        self.started_total += 1;
        self.started_wait_total = self.started_wait_total.saturating_add(msg.waited);
    }
}

/// A job held a replica's slot for `held` (its `Started` to its end): the measured
/// service time of wait estimates.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkFinished {
    pub held: Duration,
}

impl Handler<WorkFinished> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: WorkFinished, _: &mut Context<Self>) {
        self.wait.job_finished(msg.held, Instant::now());
    }
}

#[derive(Message)]
#[rtype(result = "DeploymentStatus")]
pub struct ObserveDeployment;

impl Handler<ObserveDeployment> for DeploymentSupervisor {
    type Result = MessageResult<ObserveDeployment>;

    fn handle(&mut self, _: ObserveDeployment, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.status())
    }
}

#[derive(Message)]
#[rtype(result = "Readiness")]
pub struct ObserveReadiness;

impl Handler<ObserveReadiness> for DeploymentSupervisor {
    type Result = MessageResult<ObserveReadiness>;

    fn handle(&mut self, _: ObserveReadiness, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.readiness())
    }
}

/// Replace the autoscaling policy (history is kept).
#[derive(Message)]
#[rtype(result = "()")]
pub struct UpdatePolicy(pub AutoscalingPolicy);

impl Handler<UpdatePolicy> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: UpdatePolicy, ctx: &mut Context<Self>) {
        self.autoscaler.set_policy(with_reserved_floor(&msg.0, self.spec.reserved_floor));
        self.spec.autoscaling = msg.0;
        self.tick(ctx);
    }
}

/// Hand every replica's unfinished jobs back to the queue and stop them (the end of a
/// shutdown whose drain ran out of time, on a node sharing its queue: another node
/// resumes the jobs at once instead of after their leases expire). Resolves once the
/// replicas were told.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandBackAll;

impl Handler<HandBackAll> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, _: HandBackAll, _: &mut Context<Self>) {
        for replica in self.replicas.values_mut() {
            replica.state = ReplicaState::Draining;
            replica.addr.do_send(crate::worker::HandBack);
        }
    }
}

/// Serve what is queued, drain every replica, then stop. Resolves when it is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for DeploymentSupervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        self.deleting = true;
        let (done, waiter) = oneshot::channel();
        self.deleted_waiters.push(done);
        self.tick(ctx);
        Box::pin(async move {
            let _ = waiter.await;
        })
    }
}

// --- Tenants' reserved capacity -------------------------------------------------------

/// `policy` with `min_replicas` raised to `reserved` (capped at `max_replicas`): the
/// replicas tenants reserve on a deployment stay warm whatever the load, so the
/// deployment never scales to zero while a reservation exists. Only ever raises.
pub fn with_reserved_floor(policy: &AutoscalingPolicy, reserved: u32) -> AutoscalingPolicy {
    let mut effective = policy.clone();
    effective.min_replicas = effective.min_replicas.max(reserved.min(policy.max_replicas));
    effective
}

/// Set the replicas tenants reserve on this deployment (the sum of their
/// `reserved_replicas`); the configured policy is kept and the floor applied over it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetReservedFloor(pub u32);

impl Handler<SetReservedFloor> for DeploymentSupervisor {
    type Result = ();

    fn handle(&mut self, msg: SetReservedFloor, ctx: &mut Context<Self>) {
        if msg.0 == self.spec.reserved_floor {
            return;
        }
        tracing::info!(deployment = %self.spec.name, reserved = msg.0, "reserved replicas changed");
        self.spec.reserved_floor = msg.0;
        self.autoscaler.set_policy(with_reserved_floor(&self.spec.autoscaling, msg.0));
        self.tick(ctx);
    }
}
