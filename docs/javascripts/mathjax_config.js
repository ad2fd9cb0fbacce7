// MathJax 3 for pymdownx.arithmatex (generic mode): typeset only the math it marks, wrapped in
// \( \) and \[ \]. The script itself (tex-chtml.js) is a local copy made at build time.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// Material's instant navigation (if enabled) swaps the page content without a reload: typeset the
// new content. The first page is typeset by MathJax itself as it starts. No clearCache(): it drops
// the CSS of the characters already typeset, and the math on the page then shows as blanks.
if (typeof document$ !== "undefined") {
  let firstPage = true;
  document$.subscribe(() => {
    if (firstPage) {
      firstPage = false;
      return;
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(() => {
        MathJax.typesetClear();
        MathJax.texReset();
        return MathJax.typesetPromise();
      });
    }
  });
}
