//! [`ExternalEngineFactory`]: builds a deployment's external replicas. For a preset
//! engine, a replica's cold start is: take the GPUs it needs and a free port, start the
//! process (`spawn_process`), wait until its `/health` answers 200 (`load_model`:
//! llama-server answers 503 while loading), then run a one-token completion through the
//! same API the replica will serve (`first_token`): what proves the model is loaded and
//! serving (vLLM's `/health` can be 200 after a GPU fault). A process that exits, or
//! does not pass within `start_timeout`, fails the start with its last log lines.
//!
//! For `endpoints`, a replica takes the next free URL and runs the same two checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swell_protocol::SamplingParams;

use super::api::{self, ChunkParser, Generate};
use super::client::EngineClient;
use super::config::ExternalConfig;
use super::engine::{Connection, ExternalEngine, Limits};
use super::process::{free_port, EngineProcess, ProcessSpec};
use super::scrape;
use super::template::Values;
use crate::engine::{ColdStartReport, Engine, EngineDescription, EngineFactory, ReplicaContext};
use crate::error::EngineError;
use crate::gpu_pool::{GpuPool, SlotLease, SlotPool};
use crate::hf_tokenizer::HfTokenizer;
use crate::llm::gguf::GgufFile;
use crate::llm::tokenizer::GgufTokenizer;
use crate::tokenizer::Tokenizer;

/// How often the engine's `/metrics` is read.
const SCRAPE_PERIOD: Duration = Duration::from_secs(1);

/// Builds the replicas of one `external` deployment.
pub struct ExternalEngineFactory {
    config: ExternalConfig,
    tokenizer: Arc<dyn Tokenizer>,
    context_length: u32,
    gpus: GpuPool,
    /// Which of `config.endpoints` a live replica holds.
    endpoints_taken: SlotPool,
    last_cold_start_ms: AtomicU64,
}

impl std::fmt::Debug for ExternalEngineFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalEngineFactory").field("config", &self.config).finish_non_exhaustive()
    }
}

impl ExternalEngineFactory {
    /// Check the config, load the tokenizer, and find GPUs when replicas need them.
    pub fn new(config: ExternalConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let path = config.tokenizer_path().expect("validate checks the tokenizer");
        let in_config = |e: EngineError| EngineError::Config(format!("external.tokenizer: {e}"));
        let (tokenizer, model_context): (Arc<dyn Tokenizer>, Option<u32>) = if HfTokenizer::is_hf(&path) {
            let hf = HfTokenizer::open(&path).map_err(in_config)?;
            let context = hf.context_length();
            (Arc::new(hf), context)
        } else {
            let file = GgufFile::open(&path).map_err(in_config)?;
            let gguf = GgufTokenizer::from_gguf(&file.content).map_err(in_config)?;
            let context = file.get_str("general.architecture").and_then(|arch| file.get_u32(&format!("{arch}.context_length")));
            (Arc::new(gguf), context)
        };
        let context_length = match (config.context_length, model_context) {
            (Some(c), _) => c,
            (None, Some(c)) => c,
            (None, None) => {
                return Err(EngineError::Config(
                    "external.context_length: the tokenizer's files do not say the model's context length; set it".to_string(),
                ))
            }
        };
        let gpus = if config.gpus_per_replica > 0 {
            let found = crate::llm::cuda::discover().map_err(|e| EngineError::Config(format!("external.gpus_per_replica: {e}")))?;
            if found.len() < config.gpus_per_replica as usize {
                return Err(EngineError::Config(format!(
                    "external.gpus_per_replica: {} asked for, {} GPU(s) found on this machine",
                    config.gpus_per_replica,
                    found.len()
                )));
            }
            GpuPool::new(found)
        } else {
            GpuPool::default()
        };
        Ok(Self {
            endpoints_taken: SlotPool::new(config.endpoints.len()),
            config,
            tokenizer,
            context_length,
            gpus,
            last_cold_start_ms: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &ExternalConfig {
        &self.config
    }

    fn placeholder_values(&self, port: u16, gpus: &str, replica: &str) -> Values {
        let c = &self.config;
        let threads = c.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let mut v = Values::default();
        v.set("model", c.model.clone().unwrap_or_default());
        v.set("model_name", c.display_name());
        v.set("host", c.host.clone());
        v.set("port", port.to_string());
        v.set("slots", c.slots.to_string());
        v.set("context", self.context_length.to_string());
        v.set("context_total", (u64::from(self.context_length) * u64::from(c.slots)).to_string());
        v.set("threads", threads.to_string());
        v.set("gpus", gpus.to_string());
        v.set("gpu_count", c.gpus_per_replica.to_string());
        v.set("replica", replica.to_string());
        v
    }

    /// Start the process of one replica: its spec and the URL it will answer on.
    fn spawn(&self, replica: &str, gpus: &str) -> Result<(EngineProcess, String), EngineError> {
        let port = free_port()?;
        let values = self.placeholder_values(port, gpus, replica);
        let args = self
            .config
            .arg_templates()
            .iter()
            .map(|a| values.render(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Config(format!("external.args: {e}")))?;
        let mut env: Vec<(String, String)> = self.config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // The replica uses the GPUs it was given and no others.
        env.push(("CUDA_VISIBLE_DEVICES".to_string(), gpus.to_string()));
        let spec = ProcessSpec { program: self.config.program(), args, env, working_dir: self.config.working_dir.clone() };
        let process = EngineProcess::spawn(&spec, replica)?;
        let host = if self.config.host == "0.0.0.0" { "127.0.0.1" } else { self.config.host.as_str() };
        Ok((process, format!("http://{host}:{port}")))
    }

    /// Wait for `/health` to answer 200 (the process still running) until `deadline`.
    fn wait_healthy(&self, client: &EngineClient, process: &mut Option<EngineProcess>, deadline: Instant) -> Result<(), EngineError> {
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(p) = process.as_mut() {
                if let Some(status) = p.exit_status() {
                    return Err(EngineError::Load(format!(
                        "the engine process exited ({status}) before it was ready; its last lines:\n{}",
                        p.last_lines().join("\n")
                    )));
                }
            }
            let last = match client.get("/health", Duration::from_secs(5)) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("/health answered {status}: {}", body.trim()),
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                let lines = process.as_ref().map(|p| p.last_lines().join("\n")).unwrap_or_default();
                return Err(EngineError::Load(format!(
                    "the engine at {} was not ready within {} ({last}); its last lines:\n{lines}",
                    client.base(),
                    humantime::format_duration(self.config.start_timeout)
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// One greedy token through the API the replica serves.
    fn first_token(&self, client: &EngineClient) -> Result<(), EngineError> {
        let mut prompt = self.tokenizer.encode("Hello", false).unwrap_or_default();
        if prompt.is_empty() {
            prompt.push(0);
        }
        let params = SamplingParams { max_tokens: 1, temperature: 0.0, ..SamplingParams::default() };
        let text = self.tokenizer.decode_with_special(&prompt);
        let api_kind = self.config.preset.spec().api;
        let name = self.config.display_name();
        let request = api::request(
            api_kind,
            &Generate { context: &prompt, context_text: Some(&text), max_new_tokens: 1, params: &params, model: &name },
        );
        let mut parser = ChunkParser::new(api_kind);
        let mut outcome: Result<bool, String> = Ok(false);
        let streamed = client.stream(request.path, &request.body, |data| match parser.parse(data) {
            Ok(Some(chunk)) if !chunk.token_ids.is_empty() || chunk.finish.is_some() => {
                outcome = Ok(true);
                false
            }
            Ok(_) => true,
            Err(message) => {
                outcome = Err(message);
                false
            }
        });
        let why = match (streamed, outcome) {
            (_, Ok(true)) => return Ok(()),
            (_, Err(message)) => message,
            (Err(error), Ok(false)) => error.to_string(),
            (Ok(()), Ok(false)) => "the stream ended without a token".to_string(),
        };
        Err(EngineError::Load(format!("the engine at {} is up, but a one-token completion failed: {why}", client.base())))
    }

    fn lease_endpoint(&self) -> Result<(SlotLease, String), EngineError> {
        let lease = self.endpoints_taken.lease(1).ok_or_else(|| {
            EngineError::Load(format!("every one of the {} endpoints is held by a replica", self.config.endpoints.len()))
        })?;
        let url = self.config.endpoints[lease.indices()[0]].clone();
        Ok((lease, url))
    }
}

impl EngineFactory for ExternalEngineFactory {
    fn describe(&self) -> EngineDescription {
        let measured = self.last_cold_start_ms.load(Ordering::Relaxed);
        let estimate = if self.config.gpus_per_replica > 0 { Duration::from_secs(60) } else { Duration::from_secs(5) };
        EngineDescription {
            engine: self.config.preset.name().to_string(),
            model: self.config.display_name(),
            context_length: self.context_length,
            gpus_per_replica: self.config.gpus_per_replica,
            max_batch_size: self.config.slots,
            kv_capacity_tokens: u64::from(self.context_length) * u64::from(self.config.slots),
            expected_cold_start: if measured > 0 { Duration::from_millis(measured) } else { estimate },
            performance: None,
            unsupported_params: std::iter::once("prompt_logprobs")
                .chain(api::unsupported_constraints(self.config.preset.spec().api).iter().copied())
                .map(str::to_string)
                .collect(),
        }
    }

    fn tokenizer(&self) -> Arc<dyn Tokenizer> {
        self.tokenizer.clone()
    }

    fn create(&self, replica: &ReplicaContext) -> Result<(Box<dyn Engine>, ColdStartReport), EngineError> {
        let started = Instant::now();
        let deadline = started + self.config.start_timeout;
        let mut report = ColdStartReport::default();
        let (client, mut process, lease): (EngineClient, Option<EngineProcess>, Box<dyn Send>) = if self.config.endpoints.is_empty() {
            let gpus = self.gpus.lease(self.config.gpus_per_replica as usize).ok_or_else(|| {
                EngineError::Load(format!(
                    "{} free GPU(s) needed, {} of {} are free",
                    self.config.gpus_per_replica,
                    self.gpus.free(),
                    self.gpus.gpus().len()
                ))
            })?;
            let (process, url) = self.spawn(&replica.replica_id, &gpus.visible_devices())?;
            tracing::info!(replica = %replica.replica_id, pid = process.pid(), %url, gpus = %gpus.visible_devices(), "engine process started");
            (EngineClient::new(&url), Some(process), Box::new(gpus))
        } else {
            let (lease, url) = self.lease_endpoint()?;
            (EngineClient::new(&url), None, Box::new(lease))
        };
        report.stages.push(("spawn_process".to_string(), started.elapsed()));
        let stage = Instant::now();
        self.wait_healthy(&client, &mut process, deadline)?;
        report.stages.push(("load_model".to_string(), stage.elapsed()));
        let stage = Instant::now();
        self.first_token(&client)?;
        report.stages.push(("first_token".to_string(), stage.elapsed()));
        let spec = self.config.preset.spec();
        let scraped = scrape::spawn(client.clone(), spec.metrics, SCRAPE_PERIOD);
        let conn = Connection {
            client,
            api: spec.api,
            model: self.config.display_name(),
            process,
            stop_grace: self.config.stop_grace,
            scraped,
            lease,
        };
        let limits = Limits {
            slots: self.config.slots as usize,
            context_length: self.context_length as usize,
            stream_idle_timeout: self.config.stream_idle_timeout,
        };
        let engine = ExternalEngine::new(conn, self.tokenizer.clone(), limits, replica.replica_id.clone());
        self.last_cold_start_ms.store(report.total().as_millis() as u64, Ordering::Relaxed);
        Ok((Box::new(engine), report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::external::presets::Preset;

    #[test]
    fn the_tokenizer_comes_from_a_gguf_or_a_hugging_face_folder() {
        let model = crate::llm::find_default_model().expect("the model is missing: run scripts/fetch-model");
        let model = std::fs::canonicalize(model).unwrap();
        let gguf = ExternalEngineFactory::new(ExternalConfig::new(Preset::LlamaServer, model.display().to_string())).unwrap();
        let described = gguf.describe();
        assert_eq!((described.engine.as_str(), described.context_length), ("llama-server", 8192), "{described:?}");
        assert_eq!(described.max_batch_size, 4);
        assert_eq!(described.kv_capacity_tokens, 4 * 8192);

        // A vLLM deployment of a model folder: the folder's tokenizer and config.json.
        let dir = std::env::temp_dir().join(format!("swell-factory-hf-{}", std::process::id()));
        let file = GgufFile::open(&model).unwrap();
        crate::hf_tokenizer::tests::hf_folder(&GgufTokenizer::from_gguf(&file.content).unwrap(), &dir);
        let mut vllm = ExternalConfig::new(Preset::Vllm, dir.display().to_string());
        vllm.gpus_per_replica = 1;
        assert_eq!(vllm.tokenizer_path(), Some(dir.clone()));
        if crate::llm::cuda::discover().is_ok_and(|gpus| gpus.is_empty()) {
            let error = ExternalEngineFactory::new(vllm.clone()).unwrap_err().to_string();
            assert!(error.contains("external.gpus_per_replica: 1 asked for, 0 GPU(s) found"), "{error}");
        }
        // The same folder as the tokenizer of a CPU engine.
        let mut custom = ExternalConfig::new(Preset::LlamaServer, model.display().to_string());
        custom.tokenizer = Some(dir.clone());
        let factory = ExternalEngineFactory::new(custom).unwrap();
        assert_eq!(factory.describe().context_length, 8192, "from the folder's config.json");
        let hello = factory.tokenizer().encode("Hello", false).unwrap();
        assert_eq!(hello, gguf.tokenizer().encode("Hello", false).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
