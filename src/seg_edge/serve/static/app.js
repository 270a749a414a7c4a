// seg-edge page: upload a case, follow its job, look at the labels over the images with NiiVue.
// The images are shown from the files in this browser (they are not sent back by the server);
// the label map, report and preview come from the API.
"use strict";

const MODALITIES = ["flair", "t1", "t1ce", "t2"];
const TAGS = { flair: ["_flair", "-t2f"], t1: ["_t1", "-t1n"], t1ce: ["_t1ce", "-t1c"], t2: ["_t2", "-t2w"] };
const TITLES = { flair: "FLAIR", t1: "T1", t1ce: "T1ce", t2: "T2" };
const state = { model: null, mode: "files", files: {}, stack: null, job: null, nv: null, images: {},
                background: null, labels: null, legend: [], hidden: new Set(), frames: null };

const $ = (id) => document.getElementById(id);

function stem(name) {
  return name.toLowerCase().replace(/(\.nii\.gz|\.nii|\.npy)$/, "");
}

function modalityOf(name) {
  const s = stem(name);
  return MODALITIES.find((m) => TAGS[m].some((tag) => s.endsWith(tag))) || null;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function needed() {
  return state.model ? state.model.modalities : MODALITIES;
}

function tooLarge(file) {
  const limit = state.model ? state.model.max_upload_mb * 1024 * 1024 : Infinity;
  if (file.size > limit) {
    showError(`${file.name}: ${(file.size / 1048576).toFixed(0)} MB is more than the server takes ` +
              `(${state.model.max_upload_mb} MB per file)`);
    return true;
  }
  return false;
}

function assign(files) {
  showError("");
  for (const file of files) {
    const m = modalityOf(file.name);
    if (!m) {
      showError(`${file.name}: cannot tell its modality from the name (expected a name ending in ` +
                `_flair, _t1, _t1ce, _t2 or -t2f, -t1n, -t1c, -t2w); choose it in its slot`);
      continue;
    }
    if (!tooLarge(file)) state.files[m] = file;
  }
  refresh();
}

function refresh() {
  for (const slot of document.querySelectorAll(".slot")) {
    const m = slot.dataset.field;
    slot.querySelector(".name").textContent = state.files[m] ? state.files[m].name : "";
    slot.classList.toggle("filled", Boolean(state.files[m]));
    slot.classList.toggle("unused", !needed().includes(m));
  }
  $("pane-stack").querySelector(".name").textContent = state.stack ? state.stack.name : "";
  let ready = state.mode === "files" ? needed().every((m) => state.files[m]) : Boolean(state.stack);
  if (state.mode === "stack") {
    const problem = orderProblem();
    if (problem && state.stack) showError(problem); else if (!problem && $("error").dataset.order) showError("");
    $("error").dataset.order = problem && state.stack ? "true" : "";
    ready = ready && !problem;
  }
  $("submit").disabled = !ready || !state.model;
}

// The stack's volume order as the user chose it, one select per volume: never pre-filled or guessed.
function stackOrder() {
  return [...document.querySelectorAll("select.stack-order")].map((s) => s.value);
}

function orderProblem() {
  const order = stackOrder();
  const count = state.model ? state.model.modalities.length : MODALITIES.length;
  const chosen = order.slice(0, count);
  if (chosen.some((m) => !m)) return `choose the modality of each of the stack's ${count} volumes (it is never guessed)`;
  if (new Set(chosen).size !== chosen.length) return "each modality can be chosen for one volume only";
  return null;
}

function setMode(mode) {
  state.mode = mode;
  $("tab-files").setAttribute("aria-selected", String(mode === "files"));
  $("tab-stack").setAttribute("aria-selected", String(mode === "stack"));
  $("pane-files").hidden = mode !== "files";
  $("pane-stack").hidden = mode !== "stack";
  refresh();
}

function dropTarget(element, onFiles) {
  element.addEventListener("dragover", (e) => { e.preventDefault(); element.classList.add("over"); });
  element.addEventListener("dragleave", () => element.classList.remove("over"));
  element.addEventListener("drop", (e) => {
    e.preventDefault();
    element.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

function setProgress(fraction, text) {
  $("progress-box").hidden = false;
  $("progress").value = fraction;
  $("progress-text").textContent = text;
}

function formData() {
  const data = new FormData();
  if (state.mode === "files") {
    for (const m of needed()) data.append(m, state.files[m], state.files[m].name);
  } else {
    data.append("stack", state.stack, state.stack.name);
    const count = state.model ? state.model.modalities.length : MODALITIES.length;
    data.append("modalities", stackOrder().slice(0, count).join(","));
  }
  if ($("label-scheme").value) data.append("label_scheme", $("label-scheme").value);
  if ($("overlap").value !== "") data.append("overlap", $("overlap").value);
  return data;
}

function submit(event) {
  event.preventDefault();
  showError("");
  $("submit").disabled = true;
  $("result").hidden = true;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/cases");
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setProgress(0.0, `uploading ${Math.round((100 * e.loaded) / e.total)} %`);
  };
  xhr.onload = () => {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (err) { body = { error: xhr.statusText }; }
    if (xhr.status !== 202) {
      $("progress-box").hidden = true;
      showError(body.error || `upload refused (HTTP ${xhr.status})`);
      refresh();
      return;
    }
    state.job = body;
    poll(body.id);
  };
  xhr.onerror = () => { showError("the server did not answer (is seg-edge serve still running?)"); refresh(); };
  setProgress(0, "uploading");
  xhr.send(formData());
}

async function poll(id) {
  const response = await fetch(`/v1/cases/${id}`);
  const job = await response.json();
  if (!response.ok) { showError(job.error || `HTTP ${response.status}`); refresh(); return; }
  state.job = job;
  if (job.status === "queued") setProgress(0, "queued");
  if (job.status === "running") setProgress(job.progress, `segmenting ${Math.round(100 * job.progress)} %`);
  if (job.status === "failed") { $("progress-box").hidden = true; showError(job.error); refresh(); return; }
  if (job.status === "done") {
    setProgress(1, `done in ${job.timings_s.total.toFixed(1)} s`);
    await showResult(job).catch((err) => showError(`viewer: ${err.message || err}`));
    refresh();
    return;
  }
  setTimeout(() => poll(id), 400);
}

// ---- viewer ---------------------------------------------------------------------------------

async function viewer() {
  if (state.nv) return state.nv;
  const nv = new niivue.Niivue({
    backColor: [0, 0, 0, 1], show3Dcrosshair: true, dragAndDropEnabled: false, isColorbar: false,
    crosshairColor: [0.25, 0.8, 1, 0.8], crosshairWidth: 0.5, loadingText: "", isOrientCube: false,
    multiplanarShowRender: niivue.SHOW_RENDER.ALWAYS, multiplanarLayout: niivue.MULTIPLANAR_TYPE.GRID,
  });
  await nv.attachTo("gl");
  nv.onLocationChange = (where) => { $("location").textContent = where.string || ""; };
  state.nv = nv;
  window.segEdge.nv = nv;
  return nv;
}

// A (4, X, Y, Z) .npy → one NIfTI per volume (identity affine, 1 mm, as the server reads it).
function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const major = bytes[6];
  const view = new DataView(buffer);
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.subarray(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const types = { "<f4": Float32Array, "<f8": Float64Array, "<i2": Int16Array, "<u2": Uint16Array,
                  "<i4": Int32Array, "<u4": Uint32Array, "|u1": Uint8Array, "|i1": Int8Array };
  if (!types[descr] || shape.length !== 4) throw new Error(`cannot show a .npy of dtype ${descr} and shape ${shape}`);
  const offset = start + headerLength;
  const Type = types[descr];
  const data = new Type(buffer.slice(offset, offset + Type.BYTES_PER_ELEMENT * shape.reduce((a, b) => a * b)));
  return { data, shape, fortran };
}

async function npyImages(file, order) {
  const { data, shape, fortran } = parseNpy(await file.arrayBuffer());
  const [n, X, Y, Z] = shape;
  const images = {};
  for (let m = 0; m < n && m < order.length; m++) {
    const out = new Float32Array(X * Y * Z);  // NIfTI order: x fastest
    for (let z = 0; z < Z; z++) for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) {
      const src = fortran ? m + n * (x + X * (y + Y * z)) : ((m * X + x) * Y + y) * Z + z;
      out[x + X * (y + Y * z)] = data[src];
    }
    const nifti = niivue.NVImage.createNiftiArray([X, Y, Z], [1, 1, 1],
      [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1], 16, new Uint8Array(out.buffer));
    images[order[m]] = await niivue.NVImage.loadFromUrl({ url: `${order[m]}.nii`, name: `${order[m]}.nii`,
      buffer: nifti.buffer.slice(nifti.byteOffset, nifti.byteOffset + nifti.byteLength), colormap: "gray" });
  }
  return images;
}

async function loadImages() {
  state.images = {};
  state.frames = null;
  if (state.mode === "files") {
    for (const m of needed()) {
      state.images[m] = await niivue.NVImage.loadFromFile({ file: state.files[m], name: state.files[m].name,
                                                           colormap: "gray" });
    }
    return;
  }
  const order = stackOrder().filter((m) => m);
  if (state.stack.name.toLowerCase().endsWith(".npy")) {
    state.images = await npyImages(state.stack, order);
    return;
  }
  const stack = await niivue.NVImage.loadFromFile({ file: state.stack, name: state.stack.name, colormap: "gray" });
  state.frames = Object.fromEntries(order.map((m, i) => [m, i]));
  for (const m of order) state.images[m] = stack;
}

function hexToRgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function labelColormap() {
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
  for (const row of state.legend) {
    const [r, g, b] = hexToRgb(row.colour);
    cm.R.push(r); cm.G.push(g); cm.B.push(b);
    cm.A.push(state.hidden.has(row.value) ? 0 : 255);
    cm.I.push(row.value);
    cm.labels.push(row.name);
  }
  return cm;
}

function showModality(m) {
  const nv = state.nv;
  const volume = state.images[m];
  if (state.background !== volume) {
    if (state.background) nv.removeVolume(state.background);
    nv.addVolume(volume);
    nv.setVolume(volume, 0);
    state.background = volume;
  }
  if (state.frames) nv.setFrame4D(volume.id, state.frames[m]);
  nv.setOpacity(1, Number($("opacity").value));
  nv.drawScene();
}

function setLayout(value) {
  const nv = state.nv;
  if (value === "grid") {
    nv.opts.multiplanarShowRender = niivue.SHOW_RENDER.ALWAYS;
    nv.setMultiplanarLayout(niivue.MULTIPLANAR_TYPE.GRID);
    nv.setSliceType(nv.sliceTypeMultiplanar);
  } else {
    const types = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
                    render: nv.sliceTypeRender };
    nv.setSliceType(types[value]);
  }
}

// Volumes from the label map the viewer holds (voxel count × voxel size), not copied from the API.
function labelVolumes(volume) {
  const counts = new Map();
  for (const value of volume.img) counts.set(value, (counts.get(value) || 0) + 1);
  const pix = volume.hdr.pixDims;
  const voxelMl = Math.abs(pix[1] * pix[2] * pix[3]) / 1000;
  const volumes = Object.fromEntries(state.legend.map((row) => [row.name, (counts.get(row.value) || 0) * voxelMl]));
  // the regions, as regions.py defines them: TC = NCR + ET, WT = every tumour label
  const count = (names) => state.legend.filter((row) => names.includes(row.name))
    .reduce((sum, row) => sum + (counts.get(row.value) || 0), 0) * voxelMl;
  return { labels: volumes, regions: { TC: count(["NCR", "ET"]), WT: count(state.legend.map((row) => row.name)) } };
}

// Put the crosshair on the labelled voxels' centre of mass (raw voxel order, x fastest; the header's affine to mm).
function centreOnLabels(volume) {
  const [, X, Y] = volume.hdr.dims;
  let n = 0, si = 0, sj = 0, sk = 0;
  volume.img.forEach((value, index) => {
    if (!value) return;
    n += 1;
    si += index % X;
    sj += Math.floor(index / X) % Y;
    sk += Math.floor(index / (X * Y));
  });
  if (!n) return;
  const vox = [si / n, sj / n, sk / n, 1];
  const mm = volume.hdr.affine.slice(0, 3).map((row) => row.reduce((sum, a, c) => sum + a * vox[c], 0));
  state.nv.scene.crosshairPos = state.nv.mm2frac(mm);
  state.nv.drawScene();
}

function drawLegend({ labels: volumes, regions }) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  for (const row of state.legend) {
    const tr = document.createElement("tr");
    tr.dataset.label = row.name;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = !state.hidden.has(row.value);
    box.setAttribute("aria-label", `show ${row.name}`);
    box.addEventListener("change", () => {
      if (box.checked) state.hidden.delete(row.value); else state.hidden.add(row.value);
      state.labels.setColormapLabel(labelColormap());
      state.nv.updateGLVolume();
    });
    const cells = [box, `<span class="swatch" style="background:${row.colour}"></span>${row.name} (${row.value})`,
                   row.description, volumes[row.name].toFixed(2)];
    cells.forEach((content, i) => {
      const td = document.createElement("td");
      if (i === 0) td.append(content); else td.innerHTML = content;
      if (i === 3) { td.className = "num"; td.dataset.volumeMl = String(volumes[row.name]); }
      tr.append(td);
    });
    body.append(tr);
  }
  const meaning = { TC: "tumour core (NCR + ET)", WT: "whole tumour (NCR + ED + ET)" };
  $("legend").querySelector("tfoot").innerHTML = ["TC", "WT"].map((name) =>
    `<tr data-label="${name}"><td></td><td>${name}</td><td>${meaning[name]}</td>` +
    `<td class="num" data-volume-ml="${regions[name]}">${regions[name].toFixed(2)}</td></tr>`).join("");
}

function fillDetails(job) {
  const base = `/v1/cases/${job.id}`;
  for (const [id, name] of [["dl-labels", "labels.nii.gz"], ["dl-report", "report.json"], ["dl-preview", "preview.png"]]) {
    $(id).href = `${base}/${name}`;
    $(id).download = `${job.case_id}_${name}`;
  }
  $("warnings").replaceChildren(...(job.warnings || []).map((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    return li;
  }));
  const t = job.timings_s;
  $("timings").textContent = `${job.case_id}: ${state.model.name} on ${state.model.backend}; ` +
    `load ${t.load.toFixed(2)} s, inference ${t.inference.toFixed(2)} s, total ${t.total.toFixed(2)} s` +
    (job.configuration ? `; ${job.configuration}` : "");  // the configuration run, as predict says it
}

async function showResult(job) {
  $("result").hidden = false;
  $("legend").dataset.ready = "false";
  const nv = await viewer();
  while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
  state.background = null;
  state.legend = job.legend;
  state.hidden = new Set();
  await loadImages();
  state.labels = await niivue.NVImage.loadFromUrl({ url: `/v1/cases/${job.id}/labels.nii.gz`,
                                                    name: `${job.case_id}_labels.nii.gz` });
  state.labels.setColormapLabel(labelColormap());
  const first = Object.keys(state.images)[0];
  nv.addVolume(state.images[first]);
  state.background = state.images[first];
  nv.addVolume(state.labels);
  $("modality").replaceChildren(...Object.keys(state.images).map((m) => new Option(TITLES[m], m)));
  $("modality").value = state.images.t1ce ? "t1ce" : first;
  showModality($("modality").value);
  setLayout($("layout").value);
  nv.setCrosshairWidth($("crosshair").checked ? 0.5 : 0);
  centreOnLabels(state.labels);
  drawLegend(labelVolumes(state.labels));
  fillDetails(job);
  $("legend").dataset.ready = "true";
}

// ---- start ----------------------------------------------------------------------------------

async function start() {
  window.segEdge = { state, nv: null };
  $("tab-files").addEventListener("click", () => setMode("files"));
  $("tab-stack").addEventListener("click", () => setMode("stack"));
  dropTarget($("dropzone"), assign);
  $("drop-input").addEventListener("change", (e) => assign([...e.target.files]));
  for (const slot of document.querySelectorAll(".slot")) {
    const m = slot.dataset.field;
    const input = slot.querySelector("input");
    input.addEventListener("change", () => {
      if (input.files[0] && !tooLarge(input.files[0])) state.files[m] = input.files[0];
      refresh();
    });
    dropTarget(slot, (files) => { if (files[0] && !tooLarge(files[0])) state.files[m] = files[0]; refresh(); });
  }
  const stackInput = $("file-stack");
  stackInput.addEventListener("change", () => { state.stack = stackInput.files[0] || null; refresh(); });
  dropTarget($("stack-drop"), (files) => { state.stack = files[0] || null; refresh(); });
  document.querySelectorAll("select.stack-order").forEach((select) => select.addEventListener("change", refresh));
  $("form").addEventListener("submit", submit);
  $("modality").addEventListener("change", (e) => showModality(e.target.value));
  $("layout").addEventListener("change", (e) => setLayout(e.target.value));
  $("opacity").addEventListener("input", (e) => { state.nv.setOpacity(1, Number(e.target.value)); });
  $("crosshair").addEventListener("change", (e) => { state.nv.setCrosshairWidth(e.target.checked ? 0.5 : 0); });
  try {
    const response = await fetch("/v1/model");
    state.model = await response.json();
    $("model-name").textContent = `model ${state.model.name} · ${state.model.backend}`;
    $("limit").textContent = `up to ${state.model.max_upload_mb} MB per file`;
    document.querySelectorAll("select.stack-order").forEach((select, i) => {
      select.closest("label").hidden = i >= state.model.modalities.length;  // a model reading fewer volumes
    });
  } catch (err) {
    showError("cannot reach the server's API");
  }
  refresh();
}

start();
