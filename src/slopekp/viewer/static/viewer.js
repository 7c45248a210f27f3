// slopekp viewer: the predictions of `slopekp predict`, each GLB in an orbit view beside its input photo.
// Plain WebGL 2, no libraries. The GLB reader takes what `slopekp predict` writes: the first mesh's first primitive
// (float32 positions and UVs, integer indices, an embedded PNG or JPEG), under its node's `matrix` if it has one
// (TRS properties and parent nodes are not read).
// The first view is the predicted camera (camera.json's file_rotation: the file's coordinates turned into the camera
// frame, x right, y down, z away from the viewer; docs/conventions.md), drawn orthographically.
// A WebGL context exists only while its card is on screen (browsers keep about 16 at a time).
"use strict";

const BACKGROUND = [0.149, 0.188, 0.227];

function parseGLB(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 20 || view.getUint32(0, true) !== 0x46546c67) throw new Error("not a GLB file");
  if (view.getUint32(4, true) !== 2) throw new Error("GLB version " + view.getUint32(4, true) + " (need 2)");
  let offset = 12, json = null, bin = null;
  while (offset + 8 <= buffer.byteLength) {
    const length = view.getUint32(offset, true), type = view.getUint32(offset + 4, true);
    const data = buffer.slice(offset + 8, offset + 8 + length);
    if (type === 0x4e4f534a) json = JSON.parse(new TextDecoder().decode(data));
    else if (type === 0x004e4942) bin = data;
    offset += 8 + length;
  }
  if (!json || !bin) throw new Error("GLB without a JSON or a binary chunk");
  return { json, bin };
}

const COMPONENTS = { 5126: Float32Array, 5125: Uint32Array, 5123: Uint16Array, 5121: Uint8Array };
const SIZES = { SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4 };

function readAccessor(gltf, index) {
  const acc = gltf.json.accessors[index];
  const bv = gltf.json.bufferViews[acc.bufferView];
  const Type = COMPONENTS[acc.componentType];
  if (!Type) throw new Error("unsupported accessor component type " + acc.componentType);
  const n = SIZES[acc.type], start = (bv.byteOffset || 0) + (acc.byteOffset || 0);
  const stride = bv.byteStride || n * Type.BYTES_PER_ELEMENT;
  const out = new Type(acc.count * n);
  const src = new DataView(gltf.bin);
  const get = { 5126: "getFloat32", 5125: "getUint32", 5123: "getUint16", 5121: "getUint8" }[acc.componentType];
  for (let i = 0; i < acc.count; i++)
    for (let k = 0; k < n; k++) out[i * n + k] = src[get](start + i * stride + k * Type.BYTES_PER_ELEMENT, true);
  return out;
}

function nodeMatrix(gltf, meshIndex) {
  // the transform of the first node that draws this mesh (identity when it has none)
  for (const node of gltf.json.nodes || []) if (node.mesh === meshIndex && node.matrix) return node.matrix;
  return [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1];
}

async function loadMesh(url) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
  const gltf = parseGLB(await resp.arrayBuffer());
  const prim = gltf.json.meshes[0].primitives[0];
  const pos = readAccessor(gltf, prim.attributes.POSITION);
  const m = nodeMatrix(gltf, 0);
  for (let i = 0; i < pos.length; i += 3) {
    const x = pos[i], y = pos[i + 1], z = pos[i + 2];
    pos[i] = m[0] * x + m[4] * y + m[8] * z + m[12];
    pos[i + 1] = m[1] * x + m[5] * y + m[9] * z + m[13];
    pos[i + 2] = m[2] * x + m[6] * y + m[10] * z + m[14];
  }
  const uv = prim.attributes.TEXCOORD_0 !== undefined ? readAccessor(gltf, prim.attributes.TEXCOORD_0) : null;
  let index = prim.indices !== undefined ? readAccessor(gltf, prim.indices) : null;
  if (!index) index = Uint32Array.from({ length: pos.length / 3 }, (_, i) => i);
  let image = null;
  const mat = prim.material !== undefined ? gltf.json.materials[prim.material] : null;
  const texInfo = mat && mat.pbrMetallicRoughness && mat.pbrMetallicRoughness.baseColorTexture;
  if (texInfo && uv) {
    const img = gltf.json.images[gltf.json.textures[texInfo.index].source];
    const bv = gltf.json.bufferViews[img.bufferView];
    const bytes = new Uint8Array(gltf.bin, bv.byteOffset || 0, bv.byteLength);
    const blobUrl = URL.createObjectURL(new Blob([bytes], { type: img.mimeType || "image/png" }));
    image = await new Promise((resolve, reject) => {
      const el = new Image();
      el.onload = () => resolve(el);
      el.onerror = () => reject(new Error(url + ": its texture does not decode"));
      el.src = blobUrl;
    });
  }
  return { pos, uv, index: new Uint32Array(index), image };
}

// ----------------------------------------------------------------------------------------------- 3x3 rotations

function matMul(a, b) {
  const out = new Array(9).fill(0);
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 3; k++) out[3 * i + j] += a[3 * i + k] * b[3 * k + j];
  return out;
}

function rotX(t) { const c = Math.cos(t), s = Math.sin(t); return [1, 0, 0, 0, c, -s, 0, s, c]; }
function rotY(t) { const c = Math.cos(t), s = Math.sin(t); return [c, 0, s, 0, 1, 0, -s, 0, c]; }

// ----------------------------------------------------------------------------------------------- the GL view

const VERTEX = `#version 300 es
in vec3 a_pos; in vec2 a_uv;
uniform mat3 u_rot; uniform vec3 u_centre; uniform float u_scale; uniform float u_depth;
out vec2 v_uv; out vec3 v_cam;
void main() {
  vec3 c = u_rot * (a_pos - u_centre) * u_scale;          // camera frame: x right, y down, z away
  v_uv = a_uv; v_cam = c;
  gl_Position = vec4(c.x, -c.y, u_depth * c.z, 1.0);        // clip space: y up, smaller z in front
}`;

const FRAGMENT = `#version 300 es
precision highp float;
in vec2 v_uv; in vec3 v_cam;
uniform sampler2D u_tex; uniform bool u_textured;
out vec4 color;
void main() {
  vec3 n = normalize(cross(dFdx(v_cam), dFdy(v_cam)));
  float light = 0.55 + 0.45 * abs(n.z);                      // a light at the viewer; both sides lit
  vec3 albedo = u_textured ? texture(u_tex, v_uv).rgb : vec3(0.612, 0.780, 0.918);
  color = vec4(albedo * light, 1.0);
}`;

function compile(gl, type, source) {
  const sh = gl.createShader(type);
  gl.shaderSource(sh, source);
  gl.compileShader(sh);
  if (!gl.getShaderParameter(sh, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(sh));
  return sh;
}

const LIVE = new Set();  // the views on screen, redrawn when the window changes size
window.addEventListener("resize", () => { for (const v of LIVE) v.draw(); });

class OrbitView {
  constructor(canvas, mesh, rotation, state) {
    const gl = canvas.getContext("webgl2", { antialias: true, preserveDrawingBuffer: true });
    if (!gl) throw new Error("this browser has no WebGL 2");
    this.gl = gl; this.canvas = canvas; this.mesh = mesh;
    this.initial = rotation || [1, 0, 0, 0, 1, 0, 0, 0, 1];
    this.rot = state ? state.rot : this.initial.slice(); this.zoom = state ? state.zoom : 1;
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    this.prog = prog;
    const buffer = (target, data) => { const b = gl.createBuffer(); gl.bindBuffer(target, b); gl.bufferData(target, data, gl.STATIC_DRAW); return b; };
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    buffer(gl.ARRAY_BUFFER, mesh.pos);
    let loc = gl.getAttribLocation(prog, "a_pos");
    gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
    loc = gl.getAttribLocation(prog, "a_uv");
    if (mesh.uv && loc >= 0) {
      buffer(gl.ARRAY_BUFFER, mesh.uv);
      gl.enableVertexAttribArray(loc); gl.vertexAttribPointer(loc, 2, gl.FLOAT, false, 0, 0);
    }
    buffer(gl.ELEMENT_ARRAY_BUFFER, mesh.index);
    this.textured = !!mesh.image;
    if (this.textured) {
      this.tex = gl.createTexture();
      gl.bindTexture(gl.TEXTURE_2D, this.tex);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, mesh.image);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.REPEAT);   // seam faces reach s > 1
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    }
    // centre and size: the bounding box's centre, the farthest vertex at 0.85 of the half-width
    const p = mesh.pos, lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < p.length; i += 3) for (let k = 0; k < 3; k++) { lo[k] = Math.min(lo[k], p[i + k]); hi[k] = Math.max(hi[k], p[i + k]); }
    this.centre = lo.map((v, k) => (v + hi[k]) / 2);
    let r = 1e-9;
    for (let i = 0; i < p.length; i += 3) r = Math.max(r, Math.hypot(p[i] - this.centre[0], p[i + 1] - this.centre[1], p[i + 2] - this.centre[2]));
    this.scale = 0.85 / r;
    this.uniforms = {};
    for (const name of ["u_rot", "u_centre", "u_scale", "u_depth", "u_textured", "u_tex"]) this.uniforms[name] = gl.getUniformLocation(prog, name);
    this.listen();
    LIVE.add(this);
    this.draw();
  }

  state() { return { rot: this.rot.slice(), zoom: this.zoom }; }

  dispose() {
    LIVE.delete(this);
    const lose = this.gl.getExtension("WEBGL_lose_context");
    if (lose) lose.loseContext();
  }

  listen() {
    let last = null;
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => { last = [e.clientX, e.clientY]; c.setPointerCapture(e.pointerId); });
    c.addEventListener("pointerup", () => { last = null; });
    c.addEventListener("pointercancel", () => { last = null; });
    c.addEventListener("pointermove", (e) => {
      if (!last) return;
      const dx = e.clientX - last[0], dy = e.clientY - last[1];
      last = [e.clientX, e.clientY];
      // drag right turns the object's front to the right; drag down tips its top towards the viewer (a trackball)
      this.rot = matMul(rotX(dy * 0.01), matMul(rotY(-dx * 0.01), this.rot));
      this.draw();
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom = Math.min(20, Math.max(0.1, this.zoom * Math.exp(-e.deltaY * 0.001)));
      this.draw();
    }, { passive: false });
    c.addEventListener("dblclick", () => { this.rot = this.initial.slice(); this.zoom = 1; this.draw(); });
  }

  draw() {
    const gl = this.gl, c = this.canvas;
    const w = Math.round(c.clientWidth * devicePixelRatio), h = Math.round(c.clientHeight * devicePixelRatio);
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const side = Math.min(w, h);
    gl.viewport((w - side) / 2, (h - side) / 2, side, side);
    gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    gl.disable(gl.CULL_FACE);  // templates need not wind consistently
    gl.useProgram(this.prog);
    // mat3 uniforms are column-major: pass R transposed
    const R = this.rot, Rt = [R[0], R[3], R[6], R[1], R[4], R[7], R[2], R[5], R[8]];
    const u = this.uniforms;
    gl.uniformMatrix3fv(u.u_rot, false, Rt);
    gl.uniform3fv(u.u_centre, this.centre);
    gl.uniform1f(u.u_scale, this.scale * this.zoom);
    gl.uniform1f(u.u_depth, 0.25 / this.zoom);  // the mesh stays within the depth range at any zoom
    gl.uniform1i(u.u_textured, this.textured ? 1 : 0);
    gl.uniform1i(u.u_tex, 0);
    if (this.textured) { gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, this.tex); }
    gl.bindVertexArray(this.vao);
    gl.drawElements(gl.TRIANGLES, this.mesh.index.length, gl.UNSIGNED_INT, 0);
  }
}

// ----------------------------------------------------------------------------------------------- the page

function element(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children) el.append(c);
  return el;
}

// a card's view is made when it comes on screen and given back when it leaves (its orientation is kept)
const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    e.target._visible = e.isIntersecting;
    if (e.isIntersecting) attach(e.target); else detach(e.target);
  }
}, { rootMargin: "200px" });

function attach(card) {
  if (card._view || !card._mesh) return;
  card._view = new OrbitView(card._canvas, card._mesh, card._rotation, card._state);
  card.dataset.view = "on";
}

function detach(card) {
  if (!card._view) return;
  card._state = card._view.state();
  card._view.dispose();
  const fresh = card._canvas.cloneNode(false);  // a canvas whose context was lost cannot get another one
  card._canvas.replaceWith(fresh);
  card._canvas = fresh;
  card._view = null;
  card.dataset.view = "off";
}

async function showOne(item, list) {
  const canvas = element("canvas", { "data-name": item.name, "aria-label": "3D view of " + item.name });
  const status = element("div", { class: "meta" }, "loading …");
  const links = element("div", { class: "meta" });
  for (const [label, href] of [["GLB", item.glb], ["OBJ", item.obj], ["figure", item.figure], ["turntable", item.turntable], ["camera", item.camera]])
    if (href) links.append(element("a", { href, target: "_blank" }, label));
  const pair = element("div", { class: "pair" });
  if (item.input) pair.append(element("img", { src: item.input, alt: "input " + item.name }));
  pair.append(canvas);
  const card = element("section", { class: "card", "data-status": "loading", "data-name": item.name }, element("h2", {}, item.name), pair, status, links);
  card._canvas = canvas;
  list.append(card);
  observer.observe(card);
  try {
    const [mesh, cam] = await Promise.all([loadMesh(item.glb), item.camera ? fetch(item.camera).then((r) => (r.ok ? r.json() : null)) : null]);
    const rot = cam && (cam.file_rotation || cam.rotation);
    card._mesh = mesh;
    card._rotation = rot ? rot.flat() : null;
    if (card._visible) attach(card);
    const head = cam && cam.head ? cam.head + " head, " : "";
    status.textContent = head + (mesh.index.length / 3) + " triangles, " + (mesh.pos.length / 3) + " vertices" + (mesh.image ? ", textured" : "");
    card.dataset.status = "ready";
  } catch (err) {
    status.textContent = String(err.message || err);
    status.classList.add("error");
    card.dataset.status = "error";
  }
}

async function main() {
  const params = new URLSearchParams(location.search);
  const only = params.get("name");
  if (params.has("solo")) document.body.classList.add("solo");
  const summary = document.getElementById("summary"), list = document.getElementById("list");
  try {
    const resp = await fetch("predictions.json");
    if (!resp.ok) throw new Error("predictions.json: HTTP " + resp.status);
    const index = await resp.json();
    const items = index.items.filter((it) => !only || it.name === only);
    summary.textContent = (only ? items.length + " of " : "") + index.items.length + " prediction(s) in " + index.folder + (index.model ? " — " + index.model : "") +
      (index.failed ? "; " + index.failed + " photo(s) failed, see predictions.json" : "");
    await Promise.all(items.map((it) => showOne(it, list)));
    const ready = document.querySelectorAll('.card[data-status="ready"]').length;
    document.body.dataset.ready = String(ready);
    document.body.dataset.status = items.length && ready === items.length ? "ready" : "error";
  } catch (err) {
    summary.textContent = String(err.message || err);
    summary.classList.add("error");
    document.body.dataset.status = "error";
  }
}

main();
