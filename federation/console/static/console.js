(function(){
  var live=document.getElementById('live'),conn=document.getElementById('conn'),source=null;
  function listen(path){
    if(source)source.close();
    source=new EventSource('/live?path='+encodeURIComponent(path));
    source.addEventListener('page',function(ev){live.innerHTML=JSON.parse(ev.data);conn.className='dot on';});
    source.onopen=function(){conn.className='dot on';};
    source.onerror=function(){conn.className='dot off';};
  }
  listen(live.dataset.path);
  var form=document.getElementById('filters');
  if(form){
    var timer=null;
    var refilter=function(){
      var path='/jobs?'+new URLSearchParams(new FormData(form)).toString();
      history.replaceState(null,'',path);live.dataset.path=path;listen(path);
    };
    form.addEventListener('input',function(){clearTimeout(timer);timer=setTimeout(refilter,250);});
    form.addEventListener('submit',function(ev){ev.preventDefault();refilter();});
  }
  var log=document.getElementById('log');
  if(log){
    var logs=new EventSource(log.dataset.src),note=document.getElementById('log-state');
    logs.addEventListener('chunk',function(ev){
      var end=log.scrollTop+log.clientHeight>=log.scrollHeight-4;
      log.textContent+=JSON.parse(ev.data);if(end)log.scrollTop=log.scrollHeight;
    });
    logs.addEventListener('end',function(ev){logs.close();log.dataset.state='ended';note.textContent=JSON.parse(ev.data);});
  }
})();
