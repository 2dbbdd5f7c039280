// The playground: a form, a live job view and a gallery, on the public API only.
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = { key: localStorage.getItem("t2v-api-key") || "", job: null, timer: null, videos: new Map() };
// Error params the API names -> the form field that shows them.
const FIELD_OF = { width: "size", height: "size", num_inference_steps: "steps", guidance_scale: "guidance",
                   num_frames: "size", seconds: "size" };

async function api(method, path, body) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.ok) return (response.headers.get("content-type") || "").includes("json") ? response.json() : response;
  let error = { message: response.statusText };
  try { error = (await response.json()).error || error; } catch (_) { /* not JSON */ }
  const failure = new Error(error.message);
  Object.assign(failure, { status: response.status, param: error.param, code: error.code });
  throw failure;
}

// The mp4 with the key's header (a <video src> cannot send one), as a blob URL.
async function videoURL(id) {
  if (!state.videos.has(id)) {
    const response = await api("GET", `/v1/videos/${id}/content`);
    state.videos.set(id, URL.createObjectURL(await response.blob()));
  }
  return state.videos.get(id);
}

function describe(error) {
  return error.status === 401 ? "This server needs an API key: enter it above." : error.message;
}

function definitions(target, entries) {
  target.replaceChildren(...entries.flatMap(([name, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    return [dt, dd];
  }));
}

// -- the form ---------------------------------------------------------------------------

async function loadAdapters() {
  try {
    const { data } = await api("GET", "/v1/adapters");
    const select = $("#adapter");
    const usable = data.filter((a) => a.compatible);
    state.adapters = Object.fromEntries(usable.map((a) => [a.id, a]));
    select.replaceChildren(select.firstElementChild, ...usable.map((a) => new Option(`${a.id}: ${a.description || a.experts.join(" + ")}`, a.id)));
    showSampling();
  } catch (error) {
    $("#form-error").textContent = describe(error);
  }
}

// A distilled adapter says how it is sampled: its settings are what the empty fields will get.
function showSampling() {
  const id = $("#adapter").value;
  const sampling = (state.adapters && state.adapters[id] && state.adapters[id].sampling) || {};
  $("#steps").placeholder = sampling.steps ? `${sampling.steps} (${id})` : "preset";
  $("#guidance").placeholder = sampling.guidance != null ? `${sampling.guidance} (${id})` : "4.0";
  const said = [
    sampling.steps && `${sampling.steps} steps`,
    sampling.guidance != null && `guidance ${sampling.guidance}${sampling.guidance === 1 ? " (one forward a step)" : ""}`,
    sampling.guidance_2 != null && `low-noise guidance ${sampling.guidance_2}`,
    sampling.flow_shift != null && `flow shift ${sampling.flow_shift}`,
  ].filter(Boolean);
  $("#adapter-sampling").textContent = said.length ? `${id} samples with ${said.join(", ")}, unless you set them.` : "";
}

async function loadTemplates() {
  try {
    const { data } = await api("GET", "/v1/templates");
    state.templates = Object.fromEntries(data.map((t) => [t.name, t]));
    const select = $("#template");
    select.replaceChildren(select.firstElementChild, ...data.map((t) => new Option(`${t.name}: ${t.description}`, t.name)));
  } catch (error) {
    $("#form-error").textContent = describe(error);
  }
}

function showSlots() {
  const template = state.templates && state.templates[$("#template").value];
  $("#prompt-label").hidden = Boolean(template);
  $("#slots").replaceChildren(...Object.entries(template ? template.slots : {}).map(([name, slot]) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.name = `slot-${name}`;
    input.dataset.slot = name;
    input.placeholder = slot.default || `required (base: ${slot.base})`;
    label.append(name, input);
    return label;
  }));
}

function body() {
  const value = (id) => $(id).value.trim();
  const fields = {};
  if (value("#template")) {
    fields.template = value("#template");
    fields.slots = {};
    document.querySelectorAll("[data-slot]").forEach((input) => { if (input.value.trim()) fields.slots[input.dataset.slot] = input.value.trim(); });
  } else {
    fields.prompt = $("#prompt").value;
  }
  if (value("#preset")) fields.preset = value("#preset");
  if (value("#size")) fields.size = value("#size");
  for (const [id, name] of [["#seed", "seed"], ["#steps", "steps"], ["#guidance", "guidance"], ["#min-physics", "min_physics_score"]]) {
    if (value(id) !== "") fields[name] = Number(value(id));
  }
  if (value("#adapter")) fields.lora = [{ name: value("#adapter"), scale: Number(value("#adapter-scale") || 1) }];
  return fields;
}

function clearErrors() {
  document.querySelectorAll("[data-error-for]").forEach((e) => { e.textContent = ""; });
  $("#form-error").textContent = "";
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  $("#submit").disabled = true;
  try {
    show(await api("POST", "/v1/videos", body()));
  } catch (error) {
    const param = (error.param || "").split(".")[0];
    const field = document.querySelector(`[data-error-for="${FIELD_OF[param] || param}"]`);
    (field || $("#form-error")).textContent = describe(error);
  } finally {
    $("#submit").disabled = false;
  }
}

// -- the live job view ------------------------------------------------------------------

function show(job) {
  state.job = job.id;
  $("#job").hidden = false;
  $("#job-id").textContent = job.id;
  $("#job-video").hidden = $("#job-download").hidden = true;
  $("#job-score").textContent = "-";
  $("#job-dynamics").textContent = "";
  $("#job-violations").replaceChildren();
  $("#job-error").textContent = "";
  definitions($("#job-subscores"), []);
  render(job);
  clearInterval(state.timer);
  state.timer = setInterval(poll, 400);
}

async function poll() {
  try {
    const job = await api("GET", `/v1/videos/${state.job}`);
    if (job.id === state.job) await render(job);
  } catch (error) {
    $("#job-error").textContent = describe(error);
  }
}

async function render(job) {
  $("#job-status").textContent = job.status;
  $("#job-status").className = `status-${job.status}`;
  $("#job-stage").textContent = job.stage ? `(${job.stage.replace("_", " ")})` : "";
  $("#job-progress").value = job.progress;
  $("#job-percent").textContent = `${job.progress} % (${job.steps_done}/${job.steps_total} steps)`;
  $("#job-sampling").textContent = sampled(job);
  $("#job-cancel").hidden = !["queued", "in_progress"].includes(job.status);
  // A finished preview can be made final: the same shot at the final preset's size
  $("#job-finalize").hidden = !(job.status === "completed" && job.request.preset === "preview" && !job.request.from_video);
  definitions($("#job-timings"), Object.entries(job.timings || {}).map(([k, v]) => [k, v.toFixed(2)]));
  definitions($("#job-cache"), Object.entries(job.cache || {}).map(([k, v]) => [k, v === null ? "n/a" : v ? "hit" : "miss"]));
  if (["queued", "in_progress"].includes(job.status)) return;
  clearInterval(state.timer);
  if (job.error) $("#job-error").textContent = `${job.error.code}: ${job.error.message}`;
  if (job.physics) {
    $("#job-score").textContent = job.physics.score.toFixed(3);
    definitions($("#job-subscores"), Object.entries(job.physics.subscores)
      .map(([k, v]) => [k.replaceAll("_", " "), v === null ? "n/a" : v.toFixed(3)]));
    if (job.physics.dynamics != null) $("#job-dynamics").textContent = `(motion ${job.physics.dynamics.toFixed(2)})`;
    // Why a video scored low: each violation the scorer found, with its frames and object
    $("#job-violations").replaceChildren(...(job.physics.violations || []).map((v) => {
      const where = v.frames[0] === v.frames[1] ? `frame ${v.frames[0]}` : `frames ${v.frames[0]}-${v.frames[1]}`;
      const what = v.track === null ? "" : `, object ${v.track}`;
      return Object.assign(document.createElement("li"), { textContent: `${v.kind.replaceAll("_", " ")}: ${where}${what}` });
    }));
  }
  if (job.status === "completed") {
    const url = await videoURL(job.id);
    Object.assign($("#job-video"), { src: url, hidden: false });
    Object.assign($("#job-download"), { href: url, hidden: false, download: `${job.id}.mp4` });
  }
  loadGallery();
}

// What ran: steps, guidance and forwards per step, and which adapter chose them.
function sampled(job) {
  const r = job.request || {};
  const guidance = r.guidance_scale_2 == null || r.guidance_scale_2 === r.guidance_scale
    ? `guidance ${r.guidance_scale}` : `guidance ${r.guidance_scale} / ${r.guidance_scale_2}`;
  const chosen = [...new Set(Object.values(r.sampling_from || {}))];
  const from = chosen.length ? ` (set by ${chosen.join(", ")})` : "";
  return `${r.num_inference_steps} steps, ${guidance}, ${job.forwards_per_step} forward${job.forwards_per_step === 1 ? "" : "s"} a step${from}`;
}

async function finalize() {
  $("#job-finalize").disabled = true;
  try {
    show(await api("POST", `/v1/videos/${state.job}/finalize`, {}));
  } catch (error) {
    $("#job-error").textContent = describe(error);
  } finally {
    $("#job-finalize").disabled = false;
  }
}

async function cancel() {
  try {
    await api("DELETE", `/v1/videos/${state.job}`);
    await poll();
  } catch (error) {
    $("#job-error").textContent = describe(error);
  }
}

// -- the gallery ------------------------------------------------------------------------

async function loadGallery() {
  try {
    const { data } = await api("GET", "/v1/videos?limit=12");
    $("#gallery-error").textContent = "";
    $("#gallery").replaceChildren(...await Promise.all(data.map(card)));
  } catch (error) {
    $("#gallery-error").textContent = describe(error);
  }
}

async function card(job) {
  const item = document.createElement("li");
  item.dataset.id = job.id;
  if (job.status === "completed") {
    const video = Object.assign(document.createElement("video"), { muted: true, loop: true, autoplay: true, playsInline: true });
    video.src = await videoURL(job.id);
    item.append(video);
  }
  const status = Object.assign(document.createElement("strong"), { className: `status-${job.status}`, textContent: job.status });
  const prompt = Object.assign(document.createElement("p"), { textContent: job.prompt });
  item.append(status, prompt);
  if (job.physics) item.append(Object.assign(document.createElement("p"), { className: "score", textContent: `physics ${job.physics.score.toFixed(3)}` }));
  if (job.error) item.append(Object.assign(document.createElement("p"), { className: "error", textContent: `${job.error.code}: ${job.error.message}` }));
  return item;
}

// -- start ------------------------------------------------------------------------------

$("#api-key").value = state.key;
$("#key-note").textContent = state.key ? "key saved in this browser" : "";
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem("t2v-api-key", state.key);
  $("#key-note").textContent = state.key ? "key saved in this browser" : "no key";
  loadTemplates();
  loadAdapters();
  loadGallery();
});
$("#template").addEventListener("change", showSlots);
$("#adapter").addEventListener("change", showSampling);
$("#create-form").addEventListener("submit", submit);
$("#job-cancel").addEventListener("click", cancel);
$("#job-finalize").addEventListener("click", finalize);
$("#refresh").addEventListener("click", loadGallery);
loadTemplates();
loadAdapters();
loadGallery();
